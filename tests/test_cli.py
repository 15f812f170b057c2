"""flask refresh-turn through the CLI runner: fakeredis for the store, responses for Cloudflare."""

import re

import fakeredis
import pytest
import responses

from app import create_app
from app.config import Settings
from app.core.cache import LOCAL_STALENESS
from app.core.ice import rfc3339
from app.core.service import IceService
from app.providers.cloudflare import CloudflareClient
from app.store.memory import MemoryStore
from app.store.redis import RedisStore

BASE = "https://cloudflare.example.test/v1"
URL = f"{BASE}/turn/keys/test-key-id/credentials/generate-ice-servers"
TOKEN = "test-api-token-not-a-secret"
ANSWER = {"iceServers": [{"urls": ["turn:turn.cloudflare.com:3478"], "username": "test-user", "credential": "test-password"}]}


@pytest.fixture
def redis_client():
    return fakeredis.FakeRedis()


def make_runner(store, sleep=None):
    service = IceService(
        store, [CloudflareClient("test-key-id", TOKEN, BASE)], credential_ttl=86400, cache_ttl=82800, **({"sleep": sleep} if sleep else {})
    )
    return create_app(Settings(), service=service).test_cli_runner(), service


@responses.activate
def test_refresh_turn_stores_a_new_credential_and_prints_its_expiry(redis_client):
    responses.post(URL, json=ANSWER, status=201)
    runner, service = make_runner(RedisStore(redis_client))
    result = runner.invoke(args=["refresh-turn"])
    assert result.exit_code == 0, result.output
    assert len(responses.calls) == 1
    stored = RedisStore(redis_client).get()
    assert stored.username == "test-user"
    assert f"expires at {rfc3339(stored.expires_at)}" in result.output
    assert "(in 86399 s)" in result.output or "(in 86400 s)" in result.output
    assert "test-password" not in result.output and TOKEN not in result.output


@responses.activate
@pytest.mark.parametrize(
    ("status", "reason"), [(401, "Cloudflare answered 401: Authentication error"), (500, "Cloudflare answered 500: Internal error")]
)
def test_refresh_turn_fails_with_one_line_when_cloudflare_fails(redis_client, status, reason):
    responses.post(URL, json={"success": False, "errors": [{"code": 1, "message": reason.split(": ", 1)[1]}]}, status=status)
    runner, _ = make_runner(RedisStore(redis_client))
    result = runner.invoke(args=["refresh-turn"])
    assert result.exit_code == 1
    assert result.output == f"Error: Cloudflare: {reason}\n"
    assert RedisStore(redis_client).get() is None


@responses.activate
def test_refresh_turn_fails_when_redis_is_down():
    responses.post(URL, json=ANSWER, status=201)
    runner, _ = make_runner(RedisStore.from_url("redis://127.0.0.1:1/0"))
    result = runner.invoke(args=["refresh-turn"])
    assert result.exit_code == 1
    assert result.output == "Error: shared cache: could not connect to Redis\n"
    assert len(responses.calls) == 0


def test_refresh_turn_without_redis_url_explains_why_it_cannot_help():
    runner, _ = make_runner(MemoryStore())
    result = runner.invoke(args=["refresh-turn"])
    assert result.exit_code == 1 and "REDIS_URL is not set" in result.output


@responses.activate
def test_ice_status_shows_the_credential_and_cool_down_without_secrets(redis_client):
    responses.post(URL, json=ANSWER, status=201)
    runner, service = make_runner(RedisStore(redis_client))
    service.answer()
    RedisStore(redis_client).start_cooldown(30)
    result = runner.invoke(args=["ice-status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Providers:    Cloudflare"
    assert lines[1] == "Shared cache: Redis, answering; single: a client given by the caller"
    assert lines[2] == "Credential:   from cloudflare, fresh; user test-user"
    assert [line.split(":")[0] for line in lines[3:6]] == ["Issued", "Refresh at", "Expires at"]
    assert re.fullmatch(r"Cool-down:    (29\.\d|30\.0) s left after 1 failure\(s\) in a row", lines[6])
    assert "test-password" not in result.output and TOKEN not in result.output


def test_ice_status_fails_when_redis_does_not_answer():
    runner, _ = make_runner(RedisStore.from_url("redis://127.0.0.1:1/0"))
    result = runner.invoke(args=["ice-status"])
    assert result.exit_code == 1 and result.output.endswith("Error: shared cache: could not connect to Redis\n")


def test_ice_status_without_redis_says_the_cache_is_per_worker():
    runner, _ = make_runner(MemoryStore())
    result = runner.invoke(args=["ice-status"])
    assert result.exit_code == 0 and "in-process (REDIS_URL is not set)" in result.output


REVOKE = f"{BASE}/turn/keys/test-key-id/credentials/test-user/revoke"
NEW_ANSWER = {"iceServers": [{"urls": ["turn:turn.cloudflare.com:3478"], "username": "test-user-2", "credential": "test-password-2"}]}


@pytest.fixture
def serving_test_user(redis_client):
    """Serve the credential of test-user from the shared cache; return the CLI runner."""
    with responses.RequestsMock() as mock:
        mock.post(URL, json=ANSWER, status=201)
        slept = []  # the revocation's wait for every worker's copy, recorded with the upstream calls made by then

        def sleep(seconds):
            slept.append((seconds, len(mock.calls)))

        runner, service = make_runner(RedisStore(redis_client), sleep=sleep)
        service.answer()
        mock.slept = slept
        yield runner, mock


def test_revoke_turn_replaces_then_revokes_the_old_credential(redis_client, serving_test_user):
    runner, upstream = serving_test_user
    upstream.replace(upstream.POST, URL, json=NEW_ANSWER, status=201)
    upstream.post(REVOKE, status=204)
    result = runner.invoke(args=["revoke-turn"])
    assert result.exit_code == 0, result.output
    assert [call.request.url for call in upstream.calls][1:] == [URL, REVOKE]  # new one first, then the revocation
    # Every worker re-reads the shared cache, and the nginx site's kept answers have run out, before Cloudflare revokes it.
    assert upstream.slept == [(3.5, 2)]
    assert upstream.calls[2].request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert RedisStore(redis_client).get().username == "test-user-2"
    assert result.output.startswith("Revoked TURN credential test-user. New credential from cloudflare expires at")
    assert "test-password" not in result.output and TOKEN not in result.output


def test_revoke_turn_revokes_only_once_every_worker_has_moved_to_the_new_credential(redis_client):
    # Workers re-read the shared cache within LOCAL_STALENESS: revoking sooner would hand callers a dead credential,
    # and a page fetching right after the command would still get the old one.
    events = []
    with responses.RequestsMock() as upstream:
        upstream.post(URL, json=ANSWER, status=201)
        runner, service = make_runner(RedisStore(redis_client), sleep=lambda seconds: events.append(("wait", seconds)))
        service.answer()
        upstream.replace(upstream.POST, URL, json=NEW_ANSWER, status=201)
        upstream.add_callback(upstream.POST, REVOKE, callback=lambda request: events.append(("revoke", 0)) or (204, {}, b""))
        result = runner.invoke(args=["revoke-turn"])
    assert result.exit_code == 0, result.output
    assert [name for name, _ in events] == ["wait", "revoke"] and events[0][1] >= LOCAL_STALENESS
    assert result.output.rstrip().endswith("every worker serves it now.")


def test_revoke_turn_revokes_even_when_no_new_credential_can_be_had(redis_client, serving_test_user):
    # The operator asked: a leaked credential matters most when no new one can be had. Callers get the fallback meanwhile.
    runner, upstream = serving_test_user
    upstream.replace(upstream.POST, URL, json={"success": False, "errors": [{"code": 1, "message": "Internal error"}]}, status=500)
    upstream.post(REVOKE, status=204)
    result = runner.invoke(args=["revoke-turn"])
    assert result.exit_code == 0, result.output
    assert [call.request.url for call in upstream.calls if call.request.url == REVOKE] == [REVOKE]
    assert result.output.startswith("Revoked TURN credential test-user; no new one could be had (Cloudflare: Cloudflare answered 500")
    assert result.output.rstrip().endswith("Until one can be, callers get STUN only.")
    snapshot = RedisStore(redis_client).snapshot()
    assert snapshot.credential is None and snapshot.revoked.username == "test-user"  # its tombstone: never served again


def test_revoke_turn_says_so_when_the_revocation_fails(redis_client, serving_test_user):
    runner, upstream = serving_test_user
    upstream.replace(upstream.POST, URL, json=NEW_ANSWER, status=201)
    upstream.post(REVOKE, json={"success": False, "errors": [{"code": 1, "message": "Not found"}]}, status=404)
    result = runner.invoke(args=["revoke-turn"])
    assert result.exit_code == 1
    assert (
        "test-user is no longer served (callers get cloudflare), but revoking it at Cloudflare failed: Cloudflare answered 404"
        in result.output
    )
    assert RedisStore(redis_client).get().username == "test-user-2"


def test_revoke_turn_with_nothing_cached_fails(redis_client):
    runner, _ = make_runner(RedisStore(redis_client))
    result = runner.invoke(args=["revoke-turn"])
    assert result.exit_code == 1 and "nothing to revoke" in result.output
