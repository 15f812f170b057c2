"""Per-user credentials and JWT access on real parts: two gunicorn hosts, a real redis-server, the Cloudflare stand-in."""

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cloudflare_stub import API_TOKEN
from tests.jwt_tools import HS_SECRET, bearer, hs_token
from tests.servers import app_env, run_cli, wait_until

ALICE, BOB = "alice@example.test", "bob@example.test"
REFUSAL = '{"error": "a valid access token is required", "status": 401}'


def user_env(cloudflare, redis_url, **extra):
    """Configure jwt mode with an HMAC secret and one credential per user."""
    return app_env(
        cloudflare.base_url,
        redis_url,
        ICE_ACCESS_MODE="jwt",
        ICE_JWT_SECRET=HS_SECRET,
        ICE_CREDENTIAL_SCOPE="user",
        ICE_USER_ID_SECRET="test-user-id-secret-0123456789-abcdef",
        **extra,
    )


def ask(host, subject, count=1, method="GET", client=None):
    """Send ``count`` requests at once as ``subject`` (a fresh token each), from ``client`` as nginx forwards it; return the responses."""

    def one(_):
        headers = bearer(hs_token(sub=subject)) if subject else {}
        if client:
            headers["X-Forwarded-For"] = client  # the tests connect from 127.0.0.1, a trusted proxy
        path = "/api/ice-servers" if method == "GET" else "/api/turn-credentials"
        import requests

        return requests.request(method, host.base_url + path, headers=headers, timeout=15)

    with ThreadPoolExecutor(max_workers=min(count, 40)) as pool:
        return list(pool.map(one, range(count)))


def username(response):
    """Return the TURN username of a GET answer."""
    return next(s["username"] for s in response.json()["iceServers"] if "username" in s)


@pytest.fixture
def fleet(start_host, cloudflare, redis_url):
    """Two hosts of four workers each, in user scope, on one Redis."""
    env = user_env(cloudflare, redis_url)
    return env, start_host(env, "a"), start_host(env, "b")


def test_one_upstream_call_per_user_fleet_wide_with_a_stable_opaque_identifier(fleet, cloudflare, tmp_path):
    env, host_a, host_b = fleet
    cloudflare.delay = 0.5  # the burst arrives while the one call is under way

    burst = ask(host_a, ALICE, 40)
    assert [r.status_code for r in burst] == [200] * 40
    assert len({username(r) for r in burst}) == 1 and cloudflare.call_count == 1

    bob = ask(host_a, BOB)[0]
    assert bob.status_code == 200 and username(bob) != username(burst[0])
    assert cloudflare.call_count == 2

    again = ask(host_b, ALICE, 10)
    assert {username(r) for r in again} == {username(burst[0])}
    assert cloudflare.call_count == 2

    identifiers = [call["customIdentifier"] for call in cloudflare.calls]
    assert all(isinstance(i, str) and re.fullmatch(r"[0-9a-f]{32}", i) for i in identifiers)
    assert identifiers[0] != identifiers[1]
    assert not any(part in i for i in identifiers for part in ("alice", "bob", "example"))

    # The same identifier from the CLI and after a restart of every process: computed, not stored.
    status = run_cli(env, "ice-status", "--user", ALICE)
    assert status.returncode == 0, status.stderr
    assert f"user {identifiers[0]}" in status.stdout and username(burst[0]) in status.stdout

    logs = "".join(p.read_text() for p in tmp_path.glob("*.log")) + status.stdout + status.stderr
    assert "Generating new Cloudflare TURN credentials for user " + identifiers[0] in logs
    for secret in (HS_SECRET, API_TOKEN, "stub-password", ALICE, BOB, "eyJ"):
        assert secret not in logs


def test_revoke_turn_user_replaces_that_user_everywhere_and_nobody_else(fleet, cloudflare, tmp_path):
    env, host_a, host_b = fleet
    alice_old = {username(r) for host in (host_a, host_b) for r in ask(host, ALICE, 8)}
    bob_old = {username(r) for host in (host_a, host_b) for r in ask(host, BOB, 8)}
    assert len(alice_old) == len(bob_old) == 1 and cloudflare.call_count == 2

    result = run_cli(env, "revoke-turn", "--user", ALICE)
    revoked_at = time.monotonic()
    assert result.returncode == 0, result.stderr
    assert cloudflare.revoked == list(alice_old)
    assert cloudflare.call_count == 3 and cloudflare.calls[-1]["customIdentifier"] == cloudflare.calls[0]["customIdentifier"]

    def alice_served_the_new_one_everywhere():
        return all(not ({username(r) for r in ask(host, ALICE, 12)} & alice_old) for host in (host_a, host_b))

    wait_until(alice_served_the_new_one_everywhere, 10, interval=0.2, what="the revoked user's new credential on every worker")
    assert time.monotonic() - revoked_at < 10
    assert {username(r) for host in (host_a, host_b) for r in ask(host, BOB, 12)} == bob_old
    assert not set(cloudflare.revoked) & bob_old and cloudflare.call_count == 3

    output = result.stdout + result.stderr + "".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert output.startswith(f"Revoked TURN credential {next(iter(alice_old))} of user ")
    for secret in (HS_SECRET, API_TOKEN, "stub-password", ALICE):
        assert secret not in output


def test_refresh_turn_user_replaces_that_users_credential_everywhere(fleet, cloudflare):
    env, host_a, host_b = fleet
    alice_old = {username(r) for host in (host_a, host_b) for r in ask(host, ALICE, 8)}
    result = run_cli(env, "refresh-turn", "--user", ALICE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("New TURN credential for user ") and ALICE not in result.stdout  # the opaque id, never the subject
    assert cloudflare.call_count == 2 and cloudflare.calls[-1]["customIdentifier"] == cloudflare.calls[0]["customIdentifier"]
    wait_until(
        lambda: all(not ({username(r) for r in ask(host, ALICE, 12)} & alice_old) for host in (host_a, host_b)),
        10,
        interval=0.2,
        what="the user's new credential on every worker",
    )
    assert cloudflare.revoked == []  # a refresh replaces; it revokes nothing


def test_revoke_turn_user_without_a_cached_credential_fails_with_one_line(cloudflare, redis_url):
    result = run_cli(user_env(cloudflare, redis_url), "revoke-turn", "--user", "nobody@example.test")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["Error: no TURN credential is cached for that user: nothing to revoke"]
    assert cloudflare.revoked == [] and cloudflare.call_count == 0


def test_revoke_turn_user_needs_user_scope(cloudflare, redis_url):
    result = run_cli(app_env(cloudflare.base_url, redis_url), "revoke-turn", "--user", ALICE)
    assert result.returncode == 1 and "--user needs ICE_CREDENTIAL_SCOPE=user" in result.stderr


def test_rate_limit_counts_per_address_and_per_user_across_workers(start_host, cloudflare, redis_url):
    host = start_host(user_env(cloudflare, redis_url, ICE_RATE_LIMIT="5/minute"))
    alice = [ask(host, ALICE, client="203.0.113.7")[0].status_code for _ in range(8)]
    assert sorted(alice) == [200] * 5 + [429] * 3
    assert [ask(host, BOB, client="198.51.100.8")[0].status_code for _ in range(5)] == [200] * 5  # another address, another user
    assert ask(host, ALICE, client="192.0.2.9")[0].status_code == 429  # her limit follows her to another address
    refused = [ask(host, None, client="192.0.2.10")[0] for _ in range(7)]
    assert [r.status_code for r in refused] == [401] * 5 + [429] * 2
    assert refused[0].text == REFUSAL and refused[0].headers["WWW-Authenticate"] == "Bearer"


def test_large_token_reaches_the_app_and_gets_the_same_401(start_host, cloudflare, redis_url):
    host = start_host(user_env(cloudflare, redis_url))
    token = hs_token(sub=ALICE, padding="x" * 6100)  # 8.3 KB: over gunicorn's default 8190-byte header line
    assert len(token) > 8190
    response = host.get(headers=bearer(token))
    assert response.status_code == 401 and response.text == REFUSAL
    assert host.get(headers=bearer(hs_token(sub=ALICE))).status_code == 200


def test_a_flood_of_new_users_stays_within_the_bound_and_the_shared_credential_and_limits_keep_working(start_host, cloudflare, tmp_path):
    # Issue 31: at the mint budget, distinct signed-in users (scripted sign-ups) would each leave a 632-byte record for a
    # credential's life, until a Redis sized as documented refused every write. Now past ICE_MAX_USER_RECORDS a new user
    # gets the shared credential, and Redis holds at most that many records.
    from tests.servers import RedisServer

    own_redis = RedisServer(tmp_path).start()
    try:
        client = own_redis.client()
        client.config_set("maxmemory", "16mb")
        client.config_set("maxmemory-policy", "noeviction")  # as docs/fleet-and-redis.md says: a full Redis refuses writes
        env = user_env(cloudflare, own_redis.url, ICE_MAX_USER_RECORDS="40", ICE_USER_MINT_RATE="0", ICE_RATE_LIMIT="5 per hour")
        host = start_host(env, workers=2)
        before = client.info("memory")["used_memory"]
        answers = [ask(host, f"signup-{index}@example.test", client=f"198.51.100.{index % 250 + 1}")[0] for index in range(120)]
        assert [a.status_code for a in answers] == [200] * 120
        records = client.keys("ice-servers:{user:*}:credential")
        assert len(records) == 40
        assert sum(client.memory_usage(key) for key in records) <= 40 * 700
        assert client.info("memory")["used_memory"] - before < 1_000_000
        # The 80 users past the bound got the shared credential: one username among them, issued for no user.
        late = {username(a) for a in answers[40:]}
        assert len(late) == 1 and cloudflare.call_count == 41
        # The shared credential and the limits still work: one address past "5 per hour" is refused in JSON.
        flood = ask(host, "one-more@example.test", count=8, client="203.0.113.7")
        assert sorted(r.status_code for r in flood) == [200] * 5 + [429] * 3
        assert {username(r) for r in flood if r.status_code == 200} == late
    finally:
        own_redis.stop()


def test_a_full_redis_leaves_the_shared_credential_and_the_limits_working(start_host, cloudflare, tmp_path):
    # noeviction, as documented: a full Redis refuses every write (OOM) and evicts nothing. Reads still answer, so the
    # shared credential is served; a refused script counts that request in the worker's memory; nothing is a 5xx.
    from tests.servers import RedisServer, app_env

    own_redis = RedisServer(tmp_path).start()
    try:
        client = own_redis.client()
        host = start_host(app_env(cloudflare.base_url, own_redis.url, ICE_RATE_LIMIT="3 per hour"), workers=2)
        first = host.get(headers={"X-Forwarded-For": "203.0.113.1"})
        assert first.status_code == 200
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", str(client.info("memory")["used_memory"] - 1024))  # full: every write refused
        with pytest.raises(Exception, match="used memory > 'maxmemory'"):
            client.set("probe", "x")
        answers = [host.get(headers={"X-Forwarded-For": "203.0.113.2"}) for _ in range(12)]
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 429} and 3 <= statuses.count(200) <= 6  # 3 per hour, counted per worker meanwhile
        assert {username(a) for a in answers if a.status_code == 200} == {username(first)}
        assert cloudflare.call_count == 1
        assert "Redis refuses the rate limit's script (OOM: Redis is full, maxmemory)" in host.log_path.read_text()
    finally:
        own_redis.stop()
