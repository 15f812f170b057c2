"""The TURN shared-secret provider: the TURN REST API credential, minted locally."""

from app.providers.turn_secret import TurnSecretProvider, rest_credential
from tests.conftest import T0

URLS = ("stun:turn.example.test:3478", "turn:turn.example.test:3478?transport=udp", "turns:turn.example.test:5349")


def test_rest_credential_matches_an_independent_hmac():
    # Expected value from: printf '%s' 1800000086:ice-servers | openssl dgst -sha1 -hmac test-turn-secret -binary | base64
    assert rest_credential("test-turn-secret", 1_800_000_086) == ("1800000086:ice-servers", "jhfwoeyQTNcrMJbgWsG+n5AXdMA=")


def test_issue_puts_the_expiry_in_the_username_and_the_credential_on_turn_urls():
    provider = TurnSecretProvider("test-turn-secret", URLS, clock=lambda: T0)
    servers = provider.issue(86)
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
