"""Real parts: gunicorn with 4 workers (two such hosts), a real redis-server, the Cloudflare stand-in."""

import contextlib
import os
import signal
import subprocess
import time

import pytest
import requests

from tests.cloudflare_stub import API_TOKEN
from tests.servers import ROOT, Gunicorn, app_env, clean_environ, concurrent_get, flood, run_cli, turn_username, wait_until


def test_cold_burst_makes_one_upstream_call_and_all_hosts_share_it(start_host, cloudflare, redis_url, tmp_path):
    cloudflare.delay = 1.0
    env = app_env(cloudflare.base_url, redis_url)
    host_a, host_b = start_host(env, "a"), start_host(env, "b")

    burst = concurrent_get(host_a, 200)
    assert [r.status_code for r in burst] == [200] * 200
    assert {turn_username(r) for r in burst} == {"stub-user-1"}
    assert {r.json()["source"] for r in burst} == {"cloudflare"}
    assert cloudflare.call_count == 1

    assert {turn_username(r) for r in concurrent_get(host_b, 50)} == {"stub-user-1"}
    assert cloudflare.call_count == 1

    result = run_cli(env, "refresh-turn")
    refreshed_at = time.monotonic()
    assert result.returncode == 0, result.stderr
    assert "expires at" in result.stdout
    assert cloudflare.call_count == 2

    def everyone_serves_the_new_one():
        return all({turn_username(r) for r in concurrent_get(host, 40)} == {"stub-user-2"} for host in (host_a, host_b))

    wait_until(everyone_serves_the_new_one, 10, interval=0.2, what="new credential on every worker")
    assert time.monotonic() - refreshed_at < 10
    assert cloudflare.call_count == 2

    logs = "".join(p.read_text() for p in tmp_path.glob("*.log")) + result.stdout + result.stderr
    assert "Generating new Cloudflare TURN credentials" in logs
    assert "Using cached Cloudflare TURN credentials" in logs
    assert API_TOKEN not in logs and "stub-password" not in logs


@pytest.mark.parametrize("mode", ["error500", "unauthorized", "garbage", "missing-credential", "hang"])
def test_upstream_failure_on_a_cold_cache_serves_the_fallback(start_host, cloudflare, redis_url, tmp_path, mode):
    cloudflare.mode = mode
    static = '[{"urls": ["turn:static.example.test:3478"], "username": "static-user", "credential": "static-password"}]'
    host = start_host(app_env(cloudflare.base_url, redis_url, TURN_SERVERS=static))

    responses = concurrent_get(host, 20)
    assert [r.status_code for r in responses] == [200] * 20
    assert {r.json()["source"] for r in responses} == {"static"}
    assert {r.headers["Cache-Control"] for r in responses} == {"no-store"}
    assert 1 <= cloudflare.call_count <= 4  # one attempt, then the shared cool-down (at most one per worker racing it)

    log = (tmp_path / "host.log").read_text()
    assert "Failed to fetch TURN credentials from Cloudflare" in log
    assert API_TOKEN not in log


def test_without_redis_or_cloudflare_it_serves_stun_only_and_says_so(start_host, tmp_path):
    host = start_host({})
    response = host.get()
    assert response.status_code == 200 and response.json()["source"] == "stun-only"
    assert response.json()["iceServers"] == [{"urls": ["stun:stun.cloudflare.com:3478"]}]
    log = (tmp_path / "host.log").read_text()
    assert "REDIS_URL is not set" in log and "No TURN provider configured" in log


def test_unreachable_redis_at_start_is_a_warning_not_a_crash(start_host, cloudflare, tmp_path):
    host = start_host(app_env(cloudflare.base_url, "redis://127.0.0.1:1/0"))
    response = host.get()
    assert response.status_code == 200 and response.json()["source"] == "cloudflare"
    assert "REDIS_URL (single server at 127.0.0.1:1) does not answer (could not connect to Redis)" in (tmp_path / "host.log").read_text()


def test_invalid_setting_stops_gunicorn_with_one_line():
    env = {**clean_environ(), "ICE_CACHE_TTL": "90000", "GUNICORN_CMD_ARGS": "--bind 127.0.0.1:0"}
    result = subprocess.run(
        [str(ROOT / ".venv/bin/gunicorn") if (ROOT / ".venv/bin/gunicorn").exists() else "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "ice-servers: configuration error: ICE_CACHE_TTL (90000) must be less than TURN_CREDENTIAL_TTL (86400)" in result.stderr
    assert "Traceback" not in result.stderr


def test_refresh_turn_exits_non_zero_with_one_line_when_cloudflare_fails(cloudflare, redis_url):
    cloudflare.mode = "unauthorized"
    result = run_cli(app_env(cloudflare.base_url, redis_url), "refresh-turn")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: Cloudflare: Cloudflare answered 401: Authentication error"
    assert API_TOKEN not in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_refresh_turn_exits_non_zero_when_redis_is_down(cloudflare):
    result = run_cli(app_env(cloudflare.base_url, "redis://127.0.0.1:1/0"), "refresh-turn")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: shared cache: could not connect to Redis"
    assert cloudflare.call_count == 0


def metric(text: str, line_start: str) -> float:
    """Sum the samples of a metric line prefix in Prometheus text."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def test_metrics_are_summed_over_all_workers(start_host, cloudflare, redis_url):
    host = start_host(app_env(cloudflare.base_url, redis_url))
    responses = concurrent_get(host, 120)
    assert [r.status_code for r in responses] == [200] * 120
    for _ in range(8):  # scraped by whichever worker answers: every one must give the fleet's sums
        text = host.get("/metrics").text
        assert metric(text, 'ice_requests_total{source="cloudflare"}') == 120
        assert metric(text, 'ice_upstream_requests_total{outcome="success",provider="cloudflare"}') == 1
        assert metric(text, "ice_upstream_request_duration_seconds_count") == 1
    # Every worker read the shared cache at least once (a miss and refill for one of them).
    assert metric(text, 'ice_cache_events_total{event="hit"}') + metric(text, 'ice_cache_events_total{event="miss"}') >= 4
    assert metric(text, "ice_credential_expiry_timestamp_seconds") > time.time() + 86000
    assert API_TOKEN not in text and "stub-password" not in text


def test_readyz_names_redis_while_it_fails_and_stays_ready_while_the_api_keeps_answering(start_host, cloudflare, tmp_path):
    from tests.servers import RedisServer

    own_redis = RedisServer(tmp_path).start()
    try:
        host = start_host(app_env(cloudflare.base_url, own_redis.url))
        assert host.get("/readyz").status_code == 200
        own_redis.stop()
        # A worker reuses its readiness for a second: the next probes say so within a second or two.
        probes = []
        wait_until(lambda: probes.append(host.get("/readyz")) or probes[-1].json()["checks"]["redis"] == "failing", 5, what="redis named")
        assert probes[-1].status_code == 200 and probes[-1].json()["degraded"] == ["redis"]
        assert {probe.status_code for probe in probes} == {200}
        assert host.get().json()["source"] == "cloudflare"
        own_redis.start()
        wait_until(lambda: host.get("/readyz").json()["checks"]["redis"] == "ok", 10, what="redis back")
        assert host.get("/healthz").json() == {"status": "ok"}
    finally:
        own_redis.stop()


def test_revoke_turn_reaches_every_worker_within_ten_seconds(start_host, cloudflare, redis_url):
    env = app_env(cloudflare.base_url, redis_url)
    host = start_host(env)
    assert {turn_username(r) for r in concurrent_get(host, 40)} == {"stub-user-1"}

    result = run_cli(env, "revoke-turn")
    revoked_at = time.monotonic()
    assert result.returncode == 0, result.stderr
    assert cloudflare.revoked == ["stub-user-1"] and cloudflare.call_count == 2

    wait_until(
        lambda: {turn_username(r) for r in concurrent_get(host, 40)} == {"stub-user-2"}, 10, interval=0.2, what="old credential gone"
    )
    assert time.monotonic() - revoked_at < 10


def test_rate_limit_is_exact_across_workers_and_cannot_be_forged_around(start_host, cloudflare, redis_url):
    host = start_host(app_env(cloudflare.base_url, redis_url, ICE_RATE_LIMIT="50 per hour"))  # one every 72 s after the burst
    # What the trusted proxy (nginx on the box) sends: whatever the client forged, then the address it saw.
    client_a = {"X-Forwarded-For": "203.0.113.10"}

    answers = flood(lambda _: host.get(headers=client_a), 1000)
    refused = [r for r in answers if r.status_code == 429]
    assert len(answers) - len(refused) == 50 and len(refused) == 950  # four workers, 16 at a time: exactly the limit
    assert {r.json()["error"] for r in refused} == {"too many requests from this address"}
    assert all(1 <= int(r.headers["Retry-After"]) <= 72 for r in refused)  # what GCRA says is left, in whole seconds

    forged = [host.get(headers={"X-Forwarded-For": f"198.51.100.{i}, 203.0.113.10"}) for i in range(20)]
    assert {r.status_code for r in forged} == {429}
    assert {host.get(headers={"X-Forwarded-For": "203.0.113.20"}).status_code for _ in range(10)} == {200}
    assert host.get("/healthz", headers=client_a).status_code == 200


def test_keep_alive_connections_are_closed_now_and_then_so_they_spread_over_the_workers(start_host, cloudflare, redis_url):
    """One keep-alive client must not stay on one worker for good: about 1 answer in 64 closes its connection."""
    host = start_host(app_env(cloudflare.base_url, redis_url))
    with requests.Session() as session:
        answers = [session.get(f"{host.base_url}/api/ice-servers", timeout=15) for _ in range(1000)]
    assert {r.status_code for r in answers} == {200}
    closed = sum(r.headers.get("Connection", "").lower() == "close" for r in answers)
    assert 2 <= closed <= 60  # expected ~16; never none (the chance of 0 or 1 in 1000 is under 1e-5)
    kept = sum(r.headers.get("Connection", "").lower() != "close" for r in answers)
    assert kept >= 900  # and keep-alive is otherwise kept


def test_at_a_trickle_redis_sees_a_few_commands_per_request_and_idle_next_to_none(start_host, cloudflare, tmp_path):
    """On a redis-server of its own: the rate limit's one script call per request, and a re-read per worker every 2 s."""
    from tests.servers import RedisServer

    own_redis = RedisServer(tmp_path).start()
    try:
        client = own_redis.client()
        host = start_host(app_env(cloudflare.base_url, own_redis.url, ICE_RATE_LIMIT="600 per minute"))
        for _ in range(8):  # warm every worker: scripts loaded, copies held
            host.get()

        def commands() -> int:
            return sum(stats["calls"] for name, stats in client.info("commandstats").items() if name != "cmdstat_info")

        before = commands()
        for _ in range(20):  # one request every 0.25 s: a trickle
            assert host.get().status_code == 200
            time.sleep(0.25)
        per_request = (commands() - before) / 20
        idle_before = commands()
        time.sleep(3)
        idle = commands() - idle_before
    finally:
        own_redis.stop()
    # Per request: EVALSHA plus the TIME, GET and SET it runs (4); now and then a worker's GET/PTTL/GET re-read.
    print(f"Redis commands per request at a trickle: {per_request:.2f}; in 3 s idle: {idle}")
    assert 4 <= per_request <= 6
    assert idle == 0  # no background thread, no settlement loop


def test_a_reload_whose_new_worker_dies_before_it_is_ready_still_completes(tmp_path):
    # Failed before: the dead worker's share of the old workers was never stopped, so the old settings (or code)
    # kept answering part of the requests for good, and nothing said so.
    env_file = tmp_path / ".env"
    env_file.write_text("STUN_URLS=stun:old.example.test:3478\n")
    env_file.chmod(0o600)
    host = Gunicorn({"ICE_ENV_FILE": str(env_file), "ICE_RATE_LIMIT": "0"}, workers=4, log_path=tmp_path / "host.log").start()
    try:
        old = set(host.worker_pids())
        env_file.write_text("STUN_URLS=stun:new.example.test:3478\n")
        os.kill(host.process.pid, signal.SIGHUP)

        def new_workers():  # forked by the master once its settings and code checks (children of its own) have passed
            if "Reloading: new workers start" not in host.log_path.read_text():
                return []
            return [pid for pid in host.worker_pids() if pid not in old and b"gunicorn" in _cmdline(pid)]

        killed = wait_until(new_workers, 20, interval=0.005, what="a new worker")
        os.kill(killed[0], signal.SIGKILL)  # before it has imported the app: it never stops its share of the old ones

        def only_new_answers():
            urls = {host.get().json()["iceServers"][0]["urls"][0] for _ in range(24)}
            return urls == {"stun:new.example.test:3478"}

        wait_until(only_new_answers, 20, interval=0.2, what="every answer from the new settings")
        wait_until(lambda: not old & set(host.worker_pids()) and len(host.worker_pids()) == 4, 20, what="old workers gone")
        assert "takes them over" in host.log_path.read_text()
    finally:
        host.stop()


def _cmdline(pid: int) -> bytes:
    """Return a process's command line, or nothing if it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return b""


def test_a_reload_whose_new_workers_keep_dying_is_reported_as_failed_and_the_old_ones_keep_serving(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("STUN_URLS=stun:old.example.test:3478\n")
    env_file.chmod(0o600)
    host = Gunicorn({"ICE_ENV_FILE": str(env_file), "ICE_RATE_LIMIT": "0"}, workers=2, log_path=tmp_path / "host.log").start()
    try:
        old = set(host.worker_pids())
        env_file.write_text("STUN_URLS=stun:new.example.test:3478\n")
        os.kill(host.process.pid, signal.SIGHUP)

        def kill_new_workers():  # every new worker dies before it is ready, as under an OOM killer
            if "Reloading: new workers start" not in host.log_path.read_text():
                return False  # the master still checks the settings and the code in children of its own
            for pid in host.worker_pids():
                if pid not in old and b"gunicorn" in _cmdline(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            return host.log_path.read_text().count("Reload failed") >= 2

        wait_until(kill_new_workers, 30, interval=0.005, what="the reload reported as failed")
        assert host.process.poll() is None  # gunicorn still runs
        urls = {host.get().json()["iceServers"][0]["urls"][0] for _ in range(12)}
        assert urls == {"stun:old.example.test:3478"}
    finally:
        host.stop()
