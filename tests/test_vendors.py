"""Twilio and Metered as providers, against stand-ins that follow their published contracts: answers, failures, secrets."""

from __future__ import annotations

import json
import time

import pytest
import responses

from app.core.errors import UpstreamInvalid, UpstreamRejected, UpstreamUnavailable
from app.core.ports import Issued
from app.providers.metered import MeteredProvider
from app.providers.twilio import TwilioProvider
from tests.vendor_stubs import (
    METERED_API_KEY,
    METERED_SECRET_KEY,
    TWILIO_ACCOUNT_SID,
    TWILIO_API_KEY_SECRET,
    TWILIO_API_KEY_SID,
    TWILIO_AUTH_TOKEN,
)

pytestmark = pytest.mark.unit

SECRETS = (TWILIO_AUTH_TOKEN, TWILIO_API_KEY_SECRET, METERED_SECRET_KEY, METERED_API_KEY, "test-metered-credential-api-key")


def twilio_provider(stub, user=TWILIO_ACCOUNT_SID, secret=TWILIO_AUTH_TOKEN):
    return TwilioProvider(TWILIO_ACCOUNT_SID, user, secret, stub.base_url, timeout=(1.0, 1.0))


def metered_provider(stub, secret_key=METERED_SECRET_KEY, api_key=None):
    return MeteredProvider(stub.base_url, secret_key=secret_key, api_key=api_key, timeout=(1.0, 1.0))


def assert_no_secret(text: str):
    assert not any(secret in text for secret in SECRETS), text


@pytest.mark.parametrize("signer", ["account", "api-key"])
def test_twilio_answers_standard_ice_servers_with_the_life_it_granted(twilio, signer):
    user, secret = (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN) if signer == "account" else (TWILIO_API_KEY_SID, TWILIO_API_KEY_SECRET)
    issued = twilio_provider(twilio, user, secret).issue(172_800)
    assert isinstance(issued, Issued) and issued.ttl == 86_400  # asked for at most 24 h
    assert twilio.calls[0]["ttl"] == 86_400 and twilio.calls[0]["user"] == user
    assert all("url" not in server and isinstance(server["urls"], list) for server in issued.ice_servers)  # never the deprecated url
    turn = [server for server in issued.ice_servers if "username" in server]
    assert turn and turn[0]["username"] == "twilio-user-1" and turn[0]["credential"] == "twilio-password-1"


@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ("unauthorized", UpstreamRejected, "Twilio answered 401: Authenticate (code 20003)"),
        ("error500", UpstreamRejected, "Twilio answered 500: internal error"),
        ("html", UpstreamRejected, "Twilio answered 200"),
        ("no-turn", UpstreamInvalid, "Twilio answered 201 without usable ICE servers"),
        ("hang", UpstreamUnavailable, "Twilio did not answer within 2 s"),
    ],
)
def test_twilio_failures_are_one_line_without_a_secret(twilio, mode, error, message):
    twilio.mode = mode
    with pytest.raises(error) as failure:
        twilio_provider(twilio).issue(3600)
    assert str(failure.value).startswith(message)
    assert_no_secret(str(failure.value))


def test_twilio_refuses_a_wrong_secret(twilio):
    with pytest.raises(UpstreamRejected, match="code 20003"):
        twilio_provider(twilio, secret="a-wrong-test-token").issue(3600)


def test_metered_makes_a_credential_per_call_and_answers_its_servers(metered):
    issued = metered_provider(metered).issue(3600, user="0123abcd" * 4)
    assert isinstance(issued, Issued) and issued.ttl == 3600
    created = next(iter(metered.credentials.values()))
    assert created["label"] == "0123abcd" * 4 and created["expiryInSeconds"] == 3600  # the user's opaque id labels it
    turn = [server for server in issued.ice_servers if "username" in server]
    assert turn and turn[0]["username"] == created["username"]
    assert [call["path"] for call in metered.calls] == ["/api/v1/turn/credential", "/api/v1/turn/credentials"]


def test_metered_with_only_an_api_key_serves_the_apps_standing_credential(metered):
    issued = metered_provider(metered, secret_key=None, api_key=METERED_API_KEY).issue(3600)
    assert any(server.get("username") == "metered-standing-user" for server in issued.ice_servers)
    assert [call["path"] for call in metered.calls] == ["/api/v1/turn/credentials"]


def test_metereds_two_calls_share_one_timeout(metered, monkeypatch):
    import requests

    from app.providers import metered as module

    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])

    class Recording(requests.Session):
        def request(self, method, url, **kwargs):
            timeouts.append((method, kwargs["timeout"]))
            now[0] += 1.0  # each call takes a second
            return super().request(method, url, **kwargs)

    timeouts = []
    provider = MeteredProvider(metered.base_url, secret_key=METERED_SECRET_KEY, session=Recording())
    provider.issue(3600, timeout=(0.5, 1.5))
    (post, first), (get, second) = timeouts
    assert (post, get, first) == ("POST", "GET", (0.5, 1.5))
    assert sum(second) == pytest.approx(1.0 - module.MIN_CALL)  # what the POST left, less the time kept to delete it
    timeouts.clear()
    slow = MeteredProvider(metered.base_url, secret_key=METERED_SECRET_KEY, session=Recording())
    with pytest.raises(UpstreamUnavailable, match="created a credential but no time was left"):
        slow.issue(3600, timeout=(0.3, 0.7))  # the POST took the whole second
    assert [method for method, _ in timeouts] == ["POST"]


def test_metered_revokes_by_username_and_a_users_credentials_by_label(metered):
    provider = metered_provider(metered)
    first = provider.issue(3600, user="user-a")
    provider.issue(3600, user="user-b")
    username = next(server["username"] for server in first.ice_servers if "username" in server)
    provider.revoke(username)
    assert metered.revoked == [username]
    with pytest.raises(UpstreamRejected, match="Metered answered 400 to DELETE /api/v1/turn/credential: credential not found"):
        provider.revoke(username)
    provider.revoke_label("user-b")
    assert len(metered.revoked) == 2 and not metered.credentials
    standing = metered_provider(metered, secret_key=None, api_key=METERED_API_KEY)
    assert not standing.can_revoke and provider.can_revoke
    with pytest.raises(UpstreamRejected, match="only with METERED_SECRET_KEY"):
        standing.revoke_label("user-a")
    assert len(metered.revoked) == 2


@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ("unauthorized", UpstreamRejected, "Metered answered 401 to POST /api/v1/turn/credential: Invalid secret key"),
        ("error500", UpstreamRejected, "Metered answered 500 to POST /api/v1/turn/credential: internal error"),
        ("html", UpstreamInvalid, "Metered answered POST /api/v1/turn/credential with something that is not JSON"),
        ("no-turn", UpstreamInvalid, "Metered answered without usable ICE servers"),
        ("hang", UpstreamUnavailable, "Metered did not answer within 2 s"),
    ],
)
def test_metered_failures_are_one_line_without_a_key(metered, mode, error, message):
    metered.mode = mode
    started = time.monotonic()
    with pytest.raises(error) as failure:
        metered_provider(metered).issue(3600)
    assert str(failure.value).startswith(message) and time.monotonic() - started < 5
    assert_no_secret(str(failure.value))


# -- settings ----------------------------------------------------------------------------------------


def settings(**env):
    from app.config import load_settings

    return load_settings({"ICE_ENV_FILE": "", **env})


TWILIO = {"TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT_SID, "TWILIO_AUTH_TOKEN": TWILIO_AUTH_TOKEN}
METERED = {"METERED_APP": "ice-test", "METERED_SECRET_KEY": METERED_SECRET_KEY}
CLOUDFLARE = {"CLOUDFLARE_TURN_TOKEN_ID": "test-key-id", "CLOUDFLARE_API_TOKEN": "test-api-token-not-a-secret"}


def test_every_configured_vendor_is_in_the_chain_in_the_documented_order():
    assert settings(**CLOUDFLARE, **TWILIO, **METERED).providers == ("cloudflare", "twilio", "metered")
    assert settings(**TWILIO).providers == ("twilio",)
    assert settings(**CLOUDFLARE, **METERED, ICE_PROVIDERS="metered,cloudflare").providers == ("metered", "cloudflare")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ICE_PROVIDERS": "cloudflare,xirsys", **CLOUDFLARE},
            "ICE_PROVIDERS entry 'xirsys' is not one of cloudflare, twilio, metered, turn-secret",
        ),
        ({"ICE_PROVIDERS": "twilio"}, "ICE_PROVIDERS lists twilio but TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"),
        ({"ICE_PROVIDERS": "metered"}, "ICE_PROVIDERS lists metered but METERED_APP and METERED_SECRET_KEY"),
        ({"TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT_SID}, "TWILIO_AUTH_TOKEN is not set"),
        ({**TWILIO, "TWILIO_ACCOUNT_SID": "not-a-sid"}, "TWILIO_ACCOUNT_SID must be an account SID"),
        ({"TWILIO_AUTH_TOKEN": TWILIO_AUTH_TOKEN}, "TWILIO_ACCOUNT_SID is not set"),
        ({"METERED_SECRET_KEY": METERED_SECRET_KEY}, "METERED_APP is not set"),
        ({**TWILIO, "TWILIO_API_BASE": "http://api.twilio.example/"}, "TWILIO_API_BASE must be https://"),
        ({**METERED, "METERED_API_BASE": "http://ice-test.metered.example"}, "METERED_API_BASE must be https://"),
    ],
)
def test_a_vendor_setting_that_cannot_work_stops_the_start_naming_it(env, message):
    from app.config import ConfigError

    with pytest.raises(ConfigError) as refused:
        settings(**env)
    assert str(refused.value).startswith(message) or message in str(refused.value)
    assert_no_secret(str(refused.value))


def test_the_settings_check_never_prints_a_vendors_secret(tmp_path):
    import os
    import subprocess
    import sys

    from tests.servers import ROOT, clean_environ

    env_file = tmp_path / ".env"
    foreign = {"TWILLIO_AUTH_TOKEN": "test-misspelt-token-value", "OTHER_APP_API_KEY": "test-other-app-key-value"}  # not ours
    values = {**TWILIO, **METERED, "METERED_API_KEY": METERED_API_KEY, **foreign}
    env_file.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    env_file.chmod(0o600)
    out = subprocess.run(
        [sys.executable, "-m", "app.settings_check"],
        cwd=ROOT,
        env={**clean_environ(), "ICE_ENV_FILE": str(env_file), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert_no_secret(out.stdout + out.stderr)
    assert f"TWILIO_ACCOUNT_SID={TWILIO_ACCOUNT_SID}" in out.stdout and out.stdout.count("(secret, not shown)") >= 3
    assert not any(value in out.stdout for value in foreign.values())
    assert "TWILLIO_AUTH_TOKEN=(not read by ice-servers: a typo? value not shown)" in out.stdout


# -- the chain, on a fake clock -----------------------------------------------------------------------


class Vendor:
    """A remote provider of a test: counts calls, fails on demand, grants a life of its own."""

    remote = True

    def __init__(self, source, grant=None):
        self.source, self.label, self.grant = source, source.title(), grant
        self.calls, self.failure, self.timeouts, self.hangs_on = 0, None, [], None

    def issue(self, ttl, user=None, timeout=None):
        self.calls += 1
        self.timeouts.append(timeout)
        if self.hangs_on is not None:  # a vendor that never answers: its whole timeout passes
            self.hangs_on.advance(sum(timeout))
            raise UpstreamUnavailable(f"{self.label} did not answer")
        if self.failure is not None:
            raise self.failure
        servers = [{"urls": [f"turn:{self.source}.example.test:3478"], "username": f"{self.source}-{self.calls}", "credential": "p"}]
        return Issued(servers, self.grant or ttl)


def test_the_first_vendor_that_answers_wins_and_another_ones_success_keeps_the_first_ones_retry_after(make_service, clock):
    cloudflare, twilio = Vendor("cloudflare"), Vendor("twilio")
    cloudflare.failure = UpstreamRejected("Cloudflare answered 429: Too many requests", status=429, retry_after=60)
    service = make_service(providers=[cloudflare, twilio])
    assert service.answer().source == "twilio" and (cloudflare.calls, twilio.calls) == (1, 1)
    cloudflare.failure = None
    clock.advance(13)  # Twilio's window is over: a refill, and Cloudflare is still in its 60 s
    assert service.answer().source == "twilio" and (cloudflare.calls, twilio.calls) == (1, 2)
    clock.advance(50)  # past Cloudflare's Retry-After: the next window is Cloudflare's again
    assert service.answer().source == "cloudflare" and cloudflare.calls == 2


def test_a_shorter_grant_brings_the_refresh_earlier(make_service, clock):
    short = Vendor("metered", grant=8)  # asked for 24 s, granted 8
    service = make_service(providers=[short])
    answer = service.answer()
    assert answer.body()["ttl"] == 8
    cache = service.shared_cache.copy.credential
    assert cache.expires_at - cache.issued_at == 8 and cache.refresh_at - cache.issued_at == 4  # the window keeps its share
    clock.advance(5)
    assert service.answer().body()["ttl"] >= 7 and short.calls == 2  # refreshed past its window: never served near expiry


def test_every_vendor_failing_serves_the_last_credential_then_the_fallback(make_service, clock):
    cloudflare, twilio = Vendor("cloudflare"), Vendor("twilio")
    service = make_service(providers=[cloudflare, twilio])
    assert service.answer().source == "cloudflare"
    cloudflare.failure = twilio.failure = UpstreamRejected("answered 500", status=500)
    clock.advance(13)
    assert service.answer().source == "cloudflare"  # stale, still valid
    clock.advance(12)
    assert service.answer().source == "stun-only"  # never past its expiry


def test_revoke_turn_replaces_a_twilio_credential_everywhere_and_says_twilio_cannot_revoke_it(make_service, clock):
    import fakeredis

    from app.core.operations import revoke
    from app.store.redis import RedisStore

    twilio = Vendor("twilio")  # no revoke(): Twilio has no revocation API
    service = make_service(store=RedisStore(fakeredis.FakeRedis(), clock=clock), providers=[twilio])
    old = service.answer()
    done = revoke(service)
    assert not done.revoked_upstream and done.vendor == "Twilio"
    assert done.new is not None and done.new.username != done.old.username == "twilio-1"
    assert old.ice_servers[0]["username"] == "twilio-1" and service.answer().ice_servers[0]["username"] != "twilio-1"


def test_a_hanging_vendor_leaves_the_next_ones_their_time_and_a_healthy_first_one_most_of_it(make_service, clock):
    from app.core.refill import CHAIN_BUDGET, RESERVE

    vendors = [Vendor("cloudflare"), Vendor("twilio"), Vendor("metered")]
    vendors[0].hangs_on = vendors[1].hangs_on = clock
    assert make_service(providers=vendors).answer().source == "metered"
    budgets = [sum(vendor.timeouts[0]) for vendor in vendors]
    assert budgets == pytest.approx([CHAIN_BUDGET - 2 * RESERVE, RESERVE, RESERVE])  # the first gets 2.5 s of 5.5
    assert sum(budgets) <= CHAIN_BUDGET + 1e-6  # (the fake clock counts in float seconds)


def test_a_chain_out_of_time_leaves_the_rest_unasked_and_unblamed_and_pauses_briefly(make_service, clock):
    from app.core.refill import BACKOFF_BASE

    class Trickling(Vendor):  # past its timeouts (a DNS lookup, a trickled answer): the budget is gone
        def issue(self, ttl, user=None, timeout=None):
            clock.advance(6)
            return super().issue(ttl, user, timeout)

    first, second = Trickling("cloudflare"), Vendor("twilio")
    first.failure = UpstreamUnavailable("Cloudflare did not answer")
    service = make_service(providers=[first, second])
    assert service.answer().source == "stun-only" and second.calls == 0
    snapshot = service.shared_cache.store.snapshot()
    assert 0 < snapshot.cooldown <= BACKOFF_BASE  # waiters stop waiting; the next refill comes within a second
    assert service.shared_cache.store.read("provider:twilio:cooldown") is None  # Twilio, never asked, is not cooled down


def test_an_operators_refresh_asks_every_vendor_within_the_lock_it_holds(make_service, clock):
    import fakeredis

    from app.core.errors import RefreshError
    from app.core.operations import refresh
    from app.core.refill import LOCK_TTL
    from app.store.redis import RedisStore

    vendors = [Vendor("cloudflare"), Vendor("twilio"), Vendor("metered")]
    service = make_service(store=RedisStore(fakeredis.FakeRedis(), clock=clock), providers=vendors)
    for vendor in vendors:
        vendor.hangs_on = clock
    asked = clock()
    with pytest.raises(RefreshError, match="Cloudflare: Cloudflare did not answer; Twilio: Twilio did not answer; Metered: Metered"):
        refresh(service)
    assert [vendor.calls for vendor in vendors] == [1, 1, 1] and clock() - asked < LOCK_TTL  # the lock was ours throughout


def test_revoke_turn_refuses_metereds_standing_credential_and_keeps_serving_it(make_service, clock):
    import fakeredis

    from app.core.errors import RefreshError
    from app.core.operations import revoke
    from app.store.redis import RedisStore

    standing = Vendor("metered")
    standing.standing = True  # only METERED_API_KEY: every refresh hands back the same credential
    service = make_service(store=RedisStore(fakeredis.FakeRedis(), clock=clock), providers=[standing])
    served = service.answer().ice_servers[0]["username"]
    with pytest.raises(RefreshError, match="standing credential of the app .* rotate it in Metered's dashboard"):
        revoke(service)
    assert service.answer().ice_servers[0]["username"] == served and standing.calls == 1


@responses.activate
def test_a_vendors_error_that_quotes_our_key_is_told_without_it():
    responses.post(
        "https://app.metered.test/api/v1/turn/credential",
        json={"message": f"Invalid secretKey {METERED_SECRET_KEY}"},
        status=401,
    )
    responses.post(
        f"https://api.twilio.test/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Tokens.json",
        json={"code": 20003, "message": f"Authenticate with {TWILIO_AUTH_TOKEN}"},
        status=401,
    )
    metered = MeteredProvider("https://app.metered.test", secret_key=METERED_SECRET_KEY)
    twilio = TwilioProvider(TWILIO_ACCOUNT_SID, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, "https://api.twilio.test")
    for provider in (metered, twilio):
        with pytest.raises(UpstreamRejected) as refused:
            provider.issue(3600)
        assert "[redacted]" in str(refused.value)
        assert_no_secret(str(refused.value))


@responses.activate
def test_a_metered_credential_whose_ice_servers_cannot_be_had_is_deleted():
    base = "https://app.metered.test"
    created = {"username": "test-orphan-user", "password": "p", "expiryInSeconds": 3600, "label": "ice-servers", "apiKey": "k" * 20}
    responses.post(f"{base}/api/v1/turn/credential", json=created, status=200)
    responses.get(f"{base}/api/v1/turn/credentials", json={"message": "internal error"}, status=500)
    deleted = responses.delete(f"{base}/api/v1/turn/credential", json={"success": True}, status=200)
    with pytest.raises(UpstreamRejected, match="Metered answered 500 to GET"):
        MeteredProvider(base, secret_key=METERED_SECRET_KEY).issue(3600)
    assert deleted.call_count == 1 and json.loads(deleted.calls[0].request.body) == {"username": "test-orphan-user"}


def test_revoke_turn_for_a_user_revokes_all_their_metered_credentials_before_minting_the_new_one(make_service, clock):
    from app.core.operations import revoke
    from app.store.memory import MemoryStore

    events = []

    class Labelled(Vendor):  # Metered with its secret key: labels a user's credentials, revokes by label
        can_revoke = True

        def issue(self, ttl, user=None, timeout=None):
            events.append(("issue", user))
            return super().issue(ttl, user, timeout)

        def revoke(self, username):
            events.append(("revoke", username))

        def revoke_label(self, label):
            during = service.answer("user-a")  # a request of the user's while the revocation runs
            events.append(("revoke_label", label))
            assert during.ice_servers[0]["username"] == shared  # the shared credential: nothing minted to be killed

    metered = Labelled("metered")
    store = MemoryStore(clock)
    store.shared = True  # as Redis: the operator's command reaches it
    service = make_service(store=store, providers=[metered], per_user=True)
    old = service.answer("user-a").ice_servers[0]["username"]
    shared = service.answer().ice_servers[0]["username"]
    clock.advance(13)  # a window later: user-a's second credential; the first still valid at Metered
    assert service.answer("user-a").ice_servers[0]["username"] != old
    shared = service.answer().ice_servers[0]["username"]
    done = revoke(service, "user-a")
    assert events[-2:] == [("revoke_label", "user-a"), ("issue", "user-a")]  # all of them, then a new one
    assert done.revoked_upstream and done.new is not None
    assert service.answer("user-a").ice_servers[0]["username"] == done.new.username


def test_an_answer_with_a_url_that_is_not_ice_is_refused_without_quoting_it():
    from app.config.ice_servers import parse_ice_servers

    leaky = f"https://app.metered.test/api?secretKey={METERED_SECRET_KEY}"
    with pytest.raises(ValueError, match="URL 2 of an ICE server's 'urls' is not a stun:") as refused:
        parse_ice_servers([{"urls": ["turn:a.example.test:3478", leaky], "username": "u", "credential": "c"}])
    assert_no_secret(str(refused.value))


def test_the_metered_stand_in_refuses_a_field_the_contract_lacks(metered):
    import requests

    url = f"{metered.base_url}/api/v1/turn/credential"
    answer = requests.post(url, params={"secretKey": METERED_SECRET_KEY}, json={"expiryInSeconds": 60, "ttl": 60}, timeout=5)
    assert answer.status_code == 400 and not metered.credentials
