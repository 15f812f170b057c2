"""Who may ask: access tokens, origins, the /metrics allowlist; pure and through the app."""

import hashlib
import hmac
import time
from unittest import mock

import pytest

from app import create_app
from app.access.addresses import address_allowed
from app.access.origins import origin_allowed
from app.access.signed_tokens import MAX_TOKEN_LIFETIME, mint_token, token_valid
from app.config import Settings

SECRET = "test-access-secret-long-enough"
NOW = 1_800_000_000.0
ORIGIN = "https://app.example.test"


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_minted_token_is_valid_until_it_expires():
    token = mint_token(SECRET, int(NOW) + 300)
    assert token_valid(SECRET, bearer(token), NOW)
    assert token_valid(SECRET, f"bearer  {token} ", NOW)  # scheme case and spaces do not matter
    assert not token_valid(SECRET, bearer(token), NOW + 300)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-token",
        "Bearer 1800000300",
        "Bearer .abc",
        "Bearer 18000x0300.00",
        "Bearer \u00e9\u00e9.\u00e9",
    ],
)
def test_missing_or_malformed_tokens_are_refused(authorization):
    assert not token_valid(SECRET, authorization, NOW)


def test_forged_or_tampered_tokens_are_refused():
    token = mint_token(SECRET, int(NOW) + 300)
    expiry, signature = token.split(".")
    assert not token_valid(SECRET, bearer(mint_token("another-secret-entirely", int(NOW) + 300)), NOW)
    assert not token_valid(SECRET, bearer(f"{int(expiry) + 3600}.{signature}"), NOW)  # expiry moved
    assert not token_valid(SECRET, bearer(f"{expiry}.{signature[:-1]}0"), NOW)


def test_tokens_living_longer_than_a_day_are_refused():
    assert not token_valid(SECRET, bearer(mint_token(SECRET, int(NOW) + MAX_TOKEN_LIFETIME + 60)), NOW)


@pytest.mark.parametrize("authorization", [None, "Bearer junk", "Bearer 1.2", bearer(mint_token(SECRET, int(NOW) - 1))])
def test_every_refusal_takes_the_same_constant_time_comparison(authorization):
    with mock.patch("app.access.signed_tokens.hmac.compare_digest", wraps=hmac.compare_digest) as compare:
        assert not token_valid(SECRET, authorization, NOW)
    assert compare.call_count == 1


def test_origin_or_referer_must_be_listed():
    allowed = (ORIGIN,)
    assert origin_allowed(ORIGIN, None, allowed)
    assert origin_allowed("HTTPS://APP.EXAMPLE.TEST", None, allowed)
    assert origin_allowed(None, f"{ORIGIN}/call/42?x=1", allowed)
    assert not origin_allowed("https://evil.example.test", f"{ORIGIN}/", allowed)  # Origin wins over Referer
    assert not origin_allowed(None, None, allowed)
    assert not origin_allowed("null", "javascript:alert(1)", allowed)
    assert not origin_allowed(None, "https://app.example.test.evil.test/", allowed)


def test_metrics_allowlist_takes_addresses_and_networks():
    allowed = ("127.0.0.0/8", "::1/128", "10.1.2.3")
    assert address_allowed("127.0.0.1", allowed) and address_allowed("::1", allowed) and address_allowed("10.1.2.3", allowed)
    assert not address_allowed("10.1.2.4", allowed) and not address_allowed("not-an-ip", allowed) and not address_allowed(None, allowed)


def client_for(make_service, **settings):
    return create_app(Settings(**settings), service=make_service()).test_client()


def test_open_mode_answers_anyone(make_service):
    assert client_for(make_service).get("/api/ice-servers").status_code == 200


def test_origin_mode_refuses_other_origins_with_json_403(make_service):
    client = client_for(make_service, access_mode="origin", cors_origins=(ORIGIN,))
    assert client.get("/api/ice-servers", headers={"Origin": ORIGIN}).status_code == 200
    assert client.post("/api/turn-credentials", headers={"Referer": f"{ORIGIN}/room"}).status_code == 200
    for headers in ({}, {"Origin": "https://evil.example.test"}, {"Referer": "https://evil.example.test/"}):
        response = client.get("/api/ice-servers", headers=headers)
        assert response.status_code == 403
        assert response.get_json() == {"error": "this origin may not ask for ICE servers", "status": 403}


def test_token_mode_gives_one_answer_to_every_bad_token(make_service):
    client = client_for(make_service, access_mode="token", access_secret=SECRET)
    good = mint_token(SECRET, int(time.time()) + 60)
    assert client.get("/api/ice-servers", headers={"Authorization": bearer(good)}).status_code == 200
    bad = [
        {},
        {"Authorization": "Bearer junk"},
        {"Authorization": bearer(mint_token(SECRET, int(time.time()) - 5))},  # expired
        {"Authorization": bearer(mint_token("another-secret-entirely", int(time.time()) + 60))},  # forged
        {"Authorization": bearer(good[:-2])},  # truncated
    ]
    answers = [client.get("/api/ice-servers", headers=headers) for headers in bad]
    assert {r.status_code for r in answers} == {401}
    assert {r.get_data(as_text=True) for r in answers} == {'{"error": "a valid access token is required", "status": 401}'}
    assert {r.headers["WWW-Authenticate"] for r in answers} == {"Bearer"}


def test_preflight_passes_the_gate(make_service):
    client = client_for(make_service, access_mode="token", access_secret=SECRET, cors_origins=(ORIGIN,))
    response = client.options(
        "/api/ice-servers",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "Authorization"},
    )
    assert response.status_code == 200 and response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()


def test_metrics_refuse_addresses_outside_the_allowlist(make_service):
    client = client_for(make_service)
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200
    refused = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert refused.status_code == 403 and refused.get_json()["status"] == 403
    # Through the trusted proxy, the address is the client's, not the proxy's loopback.
    assert client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 403


@pytest.mark.parametrize("expiry", ["\u00b2", "\u00b9\u00b3", "\u0663" * 10, " 1800000000", "1_800_000_000", "+1800000000"])
def test_a_token_whose_expiry_is_not_ascii_digits_is_refused_not_a_crash(expiry):
    # "²".isdigit() is True and int("²") raises: a latin-1 header byte answered a 500 with a traceback.
    secret = "test-access-secret-long-enough"
    forged = f"{expiry}.{hmac.new(secret.encode(), expiry.encode(), hashlib.sha256).hexdigest()}"  # even correctly signed
    assert token_valid(secret, f"Bearer {forged}", 1_799_999_000.0) is False


def test_a_stranger_cannot_forge_its_way_onto_the_metrics_allowlist(make_service):
    # A client reaching gunicorn directly (a container port, a host bound to 0.0.0.0) with a forged header.
    client = client_for(make_service)
    forged = client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}, environ_base={"REMOTE_ADDR": "203.0.113.50"})
    assert forged.status_code == 403
    through_nginx = client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert through_nginx.status_code == 200  # nginx on the box, for a client on the box


def test_a_stranger_cannot_pick_its_own_rate_limit_key(make_service):
    client = client_for(make_service, rate_limit="3 per minute")
    forged = [
        client.get("/api/ice-servers", headers={"X-Forwarded-For": f"198.51.100.{n}"}, environ_base={"REMOTE_ADDR": "203.0.113.50"})
        for n in range(6)
    ]
    assert [r.status_code for r in forged] == [200] * 3 + [429] * 3


def test_ipv6_callers_are_counted_by_their_64(make_service):
    client = client_for(make_service, rate_limit="2 per minute")

    def ask(address):
        return client.get("/api/ice-servers", environ_base={"REMOTE_ADDR": address}).status_code

    assert [ask("2001:db8:1:2::1"), ask("2001:db8:1:2:ffff:ffff:ffff:ffff"), ask("2001:db8:1:2::abcd")] == [200, 200, 429]
    assert ask("2001:db8:1:3::1") == 200  # the next /64 is another caller
    assert [ask("::ffff:198.51.100.7"), ask("198.51.100.7"), ask("198.51.100.7")] == [200, 200, 429]  # IPv4-mapped is IPv4
