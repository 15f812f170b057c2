"""The TURN shared-secret provider: the TURN REST API credential, minted locally."""

from app.providers.turn_secret import TurnSecretProvider, rest_credential
from tests.conftest import T0

URLS = ("stun:turn.example.test:3478", "turn:turn.example.test:3478?transport=udp", "turns:turn.example.test:5349")


def test_rest_credential_matches_an_independent_hmac():
    # Expected value from: printf '%s' 1800000086:ice-servers | openssl dgst -sha1 -hmac test-turn-secret -binary | base64
    assert rest_credential("test-turn-secret", 1_800_000_086) == ("1800000086:ice-servers", "jhfwoeyQTNcrMJbgWsG+n5AXdMA=")


def test_mint_puts_the_expiry_in_the_username_and_the_credential_on_turn_urls():
    provider = TurnSecretProvider("test-turn-secret", URLS)
    servers = provider.mint(int(T0) + 86)
    assert servers == [
        {"urls": ["stun:turn.example.test:3478"]},
        {
            "urls": ["turn:turn.example.test:3478?transport=udp", "turns:turn.example.test:5349"],
            "username": "1800000086:ice-servers",
            "credential": "jhfwoeyQTNcrMJbgWsG+n5AXdMA=",
        },
    ]


def test_secret_never_in_repr():
    assert "test-turn-secret" not in repr(TurnSecretProvider("test-turn-secret", URLS))


def test_every_process_mints_the_same_credential_for_a_window(make_service, clock):
    # An HMAC, for windows of the clock: no store, lock or cool-down, and the same answer from every worker.
    workers = [make_service(providers=[TurnSecretProvider("test-turn-secret", URLS)], credential_ttl=24, cache_ttl=12) for _ in range(3)]
    clock.advance(5)  # somewhere inside a window
    first = {worker.answer().ice_servers[-1]["username"] for worker in workers}
    assert len(first) == 1
    expires_at = int(next(iter(first)).split(":")[0])
    assert expires_at - clock() >= 24 - 12  # never less than TURN_CREDENTIAL_TTL - ICE_CACHE_TTL left
    clock.advance(12)
    assert {worker.answer().ice_servers[-1]["username"] for worker in workers} == {f"{expires_at + 12}:ice-servers"}
