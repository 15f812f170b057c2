"""JWT access (ICE_ACCESS_MODE=jwt): HMAC secrets and JWKS keys, every refusal alike, the rate limit per user."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app import create_app
from app.access.jwks import READ_TIMEOUT, REFETCH_INTERVAL
from app.config import ConfigError, load_settings
from tests.jwt_tools import AUDIENCE, HS_SECRET, ISSUER, JwksServer, SigningKey, bearer, hs_token, raw_token

REFUSAL = b'{"error": "a valid access token is required", "status": 401}'
JWKS_URL = "https://idp.example.test/jwks"


def jwt_app(make_service, **env):
    """Build the app in jwt mode from environment-style settings, through the real factory."""
    settings = load_settings({"ICE_ACCESS_MODE": "jwt", "ICE_RATE_LIMIT": "0", **env})
    return create_app(settings, service=make_service())


def hs_client(make_service, **env):
    return jwt_app(make_service, ICE_JWT_SECRET=HS_SECRET, **env).test_client()


def assert_refused(response):
    """Every refusal is the same 401, byte for byte, with WWW-Authenticate: Bearer."""
    assert response.status_code == 401
    assert response.get_data() == REFUSAL
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["Content-Type"] == "application/json"


@pytest.fixture(scope="module")
def rs_key():
    return SigningKey("RS256", "rs-key-1")


@pytest.fixture(scope="module")
def es_key():
    return SigningKey("ES256", "es-key-1")


@pytest.fixture
def jwks(rs_key, es_key):
    with JwksServer(rs_key, es_key) as server:
        yield server


# -- HMAC secret ---------------------------------------------------------------------------


def test_valid_hs256_token_is_admitted(make_service):
    response = hs_client(make_service).get("/api/ice-servers", headers=bearer(hs_token()))
    assert response.status_code == 200 and response.get_json()["source"] == "cloudflare"


def test_post_turn_credentials_is_gated_too(make_service):
    client = hs_client(make_service)
    assert_refused(client.post("/api/turn-credentials"))
    assert client.post("/api/turn-credentials", headers=bearer(hs_token())).status_code == 200


def test_missing_token_is_refused(make_service):
    assert_refused(hs_client(make_service).get("/api/ice-servers"))


@pytest.mark.parametrize("authorization", ["Bearer", "Bearer junk", "Bearer a.b.c", "Basic dXNlcjpwYXNz", "Bearer \u00e9.\u00e9.\u00e9"])
def test_malformed_token_is_refused(make_service, authorization):
    assert_refused(hs_client(make_service).get("/api/ice-servers", headers={"Authorization": authorization}))


def test_expired_token_is_refused(make_service):
    assert_refused(hs_client(make_service).get("/api/ice-servers", headers=bearer(hs_token(exp=int(time.time()) - 120))))


def test_token_expired_within_the_leeway_is_admitted(make_service):
    response = hs_client(make_service).get("/api/ice-servers", headers=bearer(hs_token(exp=int(time.time()) - 10)))
    assert response.status_code == 200


def test_forged_token_is_refused(make_service):
    forged = hs_token(secret="another-secret-entirely-0123456789-xyz")
    assert_refused(hs_client(make_service).get("/api/ice-servers", headers=bearer(forged)))


def test_tampered_token_is_refused(make_service):
    header, payload, signature = hs_token(sub="user-1").split(".")
    other_payload = hs_token(sub="admin").split(".")[1]
    assert_refused(hs_client(make_service).get("/api/ice-servers", headers=bearer(f"{header}.{other_payload}.{signature}")))


@pytest.mark.parametrize("missing", ["exp", "sub"])
def test_token_without_a_required_claim_is_refused(make_service, missing):
    token = hs_token(**{missing: None})
    assert_refused(hs_client(make_service).get("/api/ice-servers", headers=bearer(token)))


def test_wrong_audience_is_refused(make_service):
    client = hs_client(make_service, ICE_JWT_AUDIENCE=AUDIENCE)
    assert client.get("/api/ice-servers", headers=bearer(hs_token(aud=AUDIENCE))).status_code == 200
    assert_refused(client.get("/api/ice-servers", headers=bearer(hs_token(aud="another-api"))))


def test_token_without_aud_is_refused_when_an_audience_is_set(make_service):
    assert_refused(hs_client(make_service, ICE_JWT_AUDIENCE=AUDIENCE).get("/api/ice-servers", headers=bearer(hs_token())))


def test_audience_is_not_checked_when_none_is_set(make_service):
    response = hs_client(make_service).get("/api/ice-servers", headers=bearer(hs_token(aud="whatever-api")))
    assert response.status_code == 200


def test_wrong_issuer_is_refused(make_service):
    client = hs_client(make_service, ICE_JWT_ISSUER=ISSUER)
    assert client.get("/api/ice-servers", headers=bearer(hs_token(iss=ISSUER))).status_code == 200
    assert_refused(client.get("/api/ice-servers", headers=bearer(hs_token(iss="https://evil.example.test/"))))
    assert_refused(client.get("/api/ice-servers", headers=bearer(hs_token())))  # no iss at all


@pytest.mark.parametrize("issuer", [ISSUER + "evil/", ISSUER.rstrip("/"), ISSUER[:-5]])
def test_issuer_that_only_starts_like_the_configured_one_is_refused(make_service, issuer):
    client = hs_client(make_service, ICE_JWT_ISSUER=ISSUER)
    assert_refused(client.get("/api/ice-servers", headers=bearer(hs_token(iss=issuer))))


def test_alg_none_is_refused(make_service):
    now = int(time.time())
    token = raw_token({"alg": "none", "typ": "JWT"}, {"sub": "user-1", "exp": now + 300})
    assert_refused(hs_client(make_service).get("/api/ice-servers", headers=bearer(token)))


def test_hs512_token_is_refused_when_only_hs256_is_allowed(make_service):
    import jwt

    secret = HS_SECRET * 2  # long enough for HS512
    token = jwt.encode({"sub": "user-1", "exp": int(time.time()) + 300}, secret, algorithm="HS512")
    assert_refused(jwt_app(make_service, ICE_JWT_SECRET=secret).test_client().get("/api/ice-servers", headers=bearer(token)))


def test_well_formed_8kb_token_is_refused(make_service):
    token = hs_token(padding="x" * 6100)
    assert 8192 <= len(token) <= 8400  # well formed and correctly signed, but too large to verify
    assert_refused(hs_client(make_service).get("/api/ice-servers", headers=bearer(token)))


# -- JWKS ------------------------------------------------------------------------------------


JWKS_CHECKS = {"ICE_JWT_ISSUER": ISSUER, "ICE_JWT_AUDIENCE": AUDIENCE}  # required with a JWKS


def jwks_client(make_service, jwks, **env):
    return jwt_app(make_service, ICE_JWKS_URL=jwks.url, **{**JWKS_CHECKS, **env}).test_client()


@pytest.mark.parametrize("which", ["rs_key", "es_key"])
def test_tokens_signed_with_a_jwks_key_are_admitted(make_service, jwks, request, which):
    key = request.getfixturevalue(which)
    client = jwks_client(make_service, jwks)
    assert client.get("/api/ice-servers", headers=bearer(key.token())).status_code == 200
    assert jwks.fetches == 1


def test_keys_are_fetched_lazily_and_once(make_service, jwks, rs_key):
    client = jwks_client(make_service, jwks)
    assert jwks.fetches == 0  # nothing at start
    for _ in range(20):
        assert client.get("/api/ice-servers", headers=bearer(rs_key.token())).status_code == 200
    assert jwks.fetches == 1


def test_unknown_kid_is_refused_and_refetched_at_most_once_per_interval(make_service, jwks, rs_key):
    client = jwks_client(make_service, jwks)
    assert client.get("/api/ice-servers", headers=bearer(rs_key.token())).status_code == 200
    stranger = SigningKey("RS256", "unknown-kid")
    started = time.monotonic()
    for _ in range(300):
        assert_refused(client.get("/api/ice-servers", headers=bearer(stranger.token())))
    elapsed = time.monotonic() - started
    assert jwks.fetches < 50
    assert jwks.fetches <= 2 + int(elapsed / REFETCH_INTERVAL)


def test_hs256_token_signed_with_the_public_key_is_refused(make_service, jwks, rs_key):
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": rs_key.kid}
    token = raw_token(header, {"sub": "user-1", "exp": now + 300}, hmac_key=rs_key.public_pem)
    assert_refused(jwks_client(make_service, jwks).get("/api/ice-servers", headers=bearer(token)))


def test_alg_none_with_a_known_kid_is_refused(make_service, jwks, rs_key):
    now = int(time.time())
    token = raw_token({"alg": "none", "kid": rs_key.kid}, {"sub": "user-1", "exp": now + 300})
    assert_refused(jwks_client(make_service, jwks).get("/api/ice-servers", headers=bearer(token)))


def test_token_signed_by_another_key_under_a_known_kid_is_refused(make_service, jwks, rs_key):
    impostor = SigningKey("RS256", rs_key.kid)
    assert_refused(jwks_client(make_service, jwks).get("/api/ice-servers", headers=bearer(impostor.token())))


def test_key_of_an_algorithm_not_allowed_is_refused(make_service, jwks, es_key):
    client = jwks_client(make_service, jwks, ICE_JWT_ALGORITHMS="RS256")
    assert_refused(client.get("/api/ice-servers", headers=bearer(es_key.token())))


def test_requests_arriving_during_the_first_fetch_wait_for_it(make_service, jwks, rs_key):
    jwks.delay = 0.5
    client = jwks_client(make_service, jwks)
    app = client.application
    token = rs_key.token()

    def ask(_):
        with app.test_client() as own:
            return own.get("/api/ice-servers", headers=bearer(token)).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(ask, range(10)))
    assert statuses == [200] * 10
    assert jwks.fetches == 1


def test_jwks_down_mid_run_keeps_the_keys_held_and_never_answers_5xx(make_service, jwks, rs_key, monkeypatch, caplog):
    monkeypatch.setattr("app.access.jwks.REFETCH_INTERVAL", 0.0)  # let the unknown kid below refetch at once
    client = jwks_client(make_service, jwks)
    assert client.get("/api/ice-servers", headers=bearer(rs_key.token())).status_code == 200
    jwks.stop()
    assert_refused(client.get("/api/ice-servers", headers=bearer(SigningKey("ES256", "rotated-in").token())))
    assert "Could not fetch the JWKS at ICE_JWKS_URL (could not connect (ConnectionError)): keeping the 2 key(s) held" in caplog.text
    for _ in range(20):
        assert client.get("/api/ice-servers", headers=bearer(rs_key.token(sub="user-2"))).status_code == 200


def test_service_starts_and_stays_up_while_the_jwks_url_hangs(make_service, jwks, rs_key):
    jwks.hang = True
    started = time.monotonic()
    client = jwks_client(make_service, jwks)
    assert time.monotonic() - started < READ_TIMEOUT * 0.75  # a start that waited on the silent URL would take 3 s
    assert client.get("/healthz").status_code == 200
    asked = time.monotonic()
    assert_refused(client.get("/api/ice-servers", headers=bearer(rs_key.token())))
    assert time.monotonic() - asked < 6.5  # waited for the fetch, at most its timeout
    result = {}
    thread = threading.Thread(target=lambda: result.update(status=client.get("/healthz").status_code))
    thread.start()
    thread.join(2)
    assert result == {"status": 200}


# -- rate limit per verified user --------------------------------------------------------------


def test_rate_limit_counts_every_address_then_every_verified_user(make_service):
    client = hs_client(make_service, ICE_RATE_LIMIT="5/minute")

    def ask(sub, address):
        headers = bearer(hs_token(sub=sub)) if sub else {}
        return client.get("/api/ice-servers", headers=headers, environ_base={"REMOTE_ADDR": address}).status_code

    assert [ask("alice", "203.0.113.7") for _ in range(7)] == [200] * 5 + [429] * 2
    assert [ask("bob", "198.51.100.8") for _ in range(5)] == [200] * 5
    assert ask("alice", "192.0.2.9") == 429  # her own limit follows her to another address
    assert [ask(None, "192.0.2.10") for _ in range(7)] == [401] * 5 + [429] * 2  # no token: the address's limit


def test_the_audience_opt_out_admits_only_tokens_without_an_audience(make_service, jwks, rs_key, caplog):
    # For providers whose access tokens carry no aud (Cognito access tokens, Clerk): explicit, warned, and narrow.
    client = jwks_client(make_service, jwks, ICE_JWT_AUDIENCE="", ICE_JWT_NO_AUDIENCE="1")
    assert "ICE_JWT_NO_AUDIENCE=1: any token of ICE_JWT_ISSUER without an aud claim is accepted" in caplog.text
    assert client.get("/api/ice-servers", headers=bearer(rs_key.token(aud=None))).status_code == 200
    assert_refused(client.get("/api/ice-servers", headers=bearer(rs_key.token(aud="another-app"))))  # an ID token of another app
    assert_refused(client.get("/api/ice-servers", headers=bearer(rs_key.token(aud=None, iss="https://other.example.test/"))))


def test_an_address_over_its_limit_is_refused_before_any_token_is_verified(make_service, jwks, rs_key):
    # A flood of junk tokens, or of unknown key ids, costs one cheap refusal each: never a verification or a JWKS fetch.
    client = jwks_client(make_service, jwks, ICE_RATE_LIMIT="3 per minute")
    same_address = {"REMOTE_ADDR": "203.0.113.7"}
    assert [client.get("/api/ice-servers", environ_base=same_address).status_code for _ in range(3)] == [401] * 3
    unknown_kids = [SigningKey("RS256", f"junk-kid-{n}").token() for n in range(20)]
    answers = [client.get("/api/ice-servers", headers=bearer(token), environ_base=same_address) for token in unknown_kids]
    assert [r.status_code for r in answers] == [429] * 20 and jwks.fetches == 0
    other = client.get("/api/ice-servers", headers=bearer(rs_key.token()), environ_base={"REMOTE_ADDR": "198.51.100.8"})
    assert other.status_code == 200 and jwks.fetches == 1


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "ICE_JWT_SECRET or ICE_JWKS_URL is not set"),
        ({"ICE_JWT_SECRET": HS_SECRET, "ICE_JWKS_URL": "https://idp.example.test/jwks"}, "ICE_JWT_SECRET and ICE_JWKS_URL are both set"),
        ({"ICE_JWT_SECRET": "too-short-0123456789"}, "ICE_JWT_SECRET is shorter than 32 characters"),
        ({"ICE_JWT_SECRET": HS_SECRET, "ICE_JWT_ALGORITHMS": "HS256,RS256"}, "ICE_JWT_ALGORITHMS lists RS256"),
        ({"ICE_JWKS_URL": JWKS_URL, **JWKS_CHECKS, "ICE_JWT_ALGORITHMS": "RS256,HS256"}, "ICE_JWT_ALGORITHMS lists HS256"),
        ({"ICE_JWKS_URL": JWKS_URL, **JWKS_CHECKS, "ICE_JWT_ALGORITHMS": "none"}, "ICE_JWT_ALGORITHMS entry 'none'"),
        ({"ICE_JWKS_URL": "ftp://idp.example.test/jwks", **JWKS_CHECKS}, "ICE_JWKS_URL must be an https:// URL"),
        # In clear text, anyone on the path could hand in signing keys.
        ({"ICE_JWKS_URL": "http://idp.example.test/jwks", **JWKS_CHECKS}, "ICE_JWKS_URL must be https://"),
        # A shared key set (Firebase, Google, a provider's tenants) signs tokens of other projects too.
        ({"ICE_JWKS_URL": JWKS_URL, "ICE_JWT_AUDIENCE": AUDIENCE}, "ICE_JWT_ISSUER is not set: with ICE_JWKS_URL"),
        ({"ICE_JWKS_URL": JWKS_URL, "ICE_JWT_ISSUER": ISSUER}, "ICE_JWT_AUDIENCE is not set: with ICE_JWKS_URL"),
        ({"ICE_JWKS_URL": JWKS_URL, **JWKS_CHECKS, "ICE_JWT_NO_AUDIENCE": "1"}, "ICE_JWT_NO_AUDIENCE=1 and ICE_JWT_AUDIENCE are both set"),
    ],
)
def test_bad_jwt_settings_stop_the_start_naming_the_variable(env, message):
    with pytest.raises(ConfigError, match=message) as excinfo:
        load_settings({"ICE_ACCESS_MODE": "jwt", **env})
    assert "\n" not in str(excinfo.value) and HS_SECRET not in str(excinfo.value)


def test_default_algorithms_follow_the_key_source():
    assert load_settings({"ICE_ACCESS_MODE": "jwt", "ICE_JWT_SECRET": HS_SECRET}).jwt_algorithms == ("HS256",)
    jwks = load_settings({"ICE_ACCESS_MODE": "jwt", "ICE_JWKS_URL": JWKS_URL, **JWKS_CHECKS})
    assert jwks.jwt_algorithms == ("RS256", "ES256")


def test_jwt_secret_is_not_in_the_settings_repr():
    assert HS_SECRET not in repr(load_settings({"ICE_ACCESS_MODE": "jwt", "ICE_JWT_SECRET": HS_SECRET}))


def test_a_provider_failing_fast_is_asked_at_most_once_per_interval_however_old_the_keys(jwks, rs_key):
    # Failed before: once the keys were older than MAX_AGE, every request started a fetch (and a WARNING line).
    from app.access.jwks import MAX_AGE, JwksCache
    from tests.conftest import FakeClock

    clock = FakeClock()
    cache = JwksCache(jwks.url, clock=clock, spawn=lambda fetch: fetch())  # fetches inline: each one is counted at once
    assert cache.key(rs_key.kid) is not None and jwks.fetches == 1
    jwks.status = 500
    clock.advance(MAX_AGE + 1)
    for _ in range(100):
        assert cache.key(rs_key.kid) is not None  # the old keys keep serving
        clock.advance(0.01)
    assert jwks.fetches == 2
    clock.advance(REFETCH_INTERVAL)
    for _ in range(100):
        cache.key(rs_key.kid)
    assert jwks.fetches == 3


def test_made_up_kids_cannot_hold_every_thread_while_a_slow_provider_is_fetched(jwks, rs_key):
    # Failed before: while a fetch ran (up to 5 s), every request with an unknown kid waited for it.
    from app.access.jwks import UNKNOWN_KID_WAITERS, JwksCache
    from tests.conftest import FakeClock

    clock = FakeClock()
    cache = JwksCache(jwks.url, clock=clock)
    assert cache.key(rs_key.kid) is not None
    jwks.delay = 2.0
    clock.advance(REFETCH_INTERVAL)  # the first made-up kid starts a fetch; the others come while it runs
    took = []

    def ask(index):
        started = time.monotonic()
        assert cache.key(f"made-up-{index}") is None
        took.append(time.monotonic() - started)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(ask, range(8)))
    assert len([seconds for seconds in took if seconds > 1.0]) <= UNKNOWN_KID_WAITERS
    assert jwks.fetches == 2
