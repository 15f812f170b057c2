"""Beyond one Redis, on real processes: TLS with an ACL user, Sentinel failover under load, Redis Cluster."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.cloudflare_stub import API_TOKEN
from tests.redis_topologies import ACL_PASSWORD, SentinelGroup
from tests.servers import app_env, concurrent_get, every_worker_holds_a_credential, flood, run_cli, run_load, turn_username, wait_until

# One worker runs the tests that share this session fixture (make test runs them in parallel).
pytestmark = pytest.mark.xdist_group("redis-topologies")


def refresh_reaches_both_hosts(env, cloudflare, hosts, expected="stub-user-2"):
    """Run refresh-turn (retrying while a failover settles) and check every worker of both hosts serves it within 10 s."""
    result = wait_until(lambda: (r := run_cli(env, "refresh-turn")).returncode == 0 and r, 15, interval=0.5, what="refresh-turn")
    refreshed = time.monotonic()
    assert "expires at" in result.stdout
    wait_until(
        lambda: {turn_username(r) for h in hosts for r in concurrent_get(h, 16)} == {expected},
        10,
        interval=0.2,
        what="the refreshed credential on both hosts",
    )
    assert time.monotonic() - refreshed < 10


def tls_env(cloudflare, server, ca_file=None, password=ACL_PASSWORD, **extra):
    return app_env(cloudflare.base_url, server.url(password), REDIS_CA_FILE=str(ca_file or server.ca_file), **extra)


def test_tls_redis_with_an_acl_user_shares_one_credential(start_host, cloudflare, tls_redis):
    tls_redis.flush()
    env = tls_env(cloudflare, tls_redis, ICE_RATE_LIMIT="30 per hour")
    host_a, host_b = start_host(env, "a"), start_host(env, "b")
    headers = {"X-Forwarded-For": "203.0.113.50"}
    answers = flood(lambda i: (host_a if i % 2 else host_b).get(headers=headers), 60)  # on the same TLS user
    assert sum(r.status_code == 200 for r in answers) == 30 and sum(r.status_code == 429 for r in answers) == 30
    assert {turn_username(r) for r in answers if r.status_code == 200} == {"stub-user-1"}
    assert cloudflare.call_count == 1
    assert host_a.get("/readyz").json()["checks"] == {"redis": "ok", "upstream": "ok"}
    assert tls_redis.client("admin", "test-redis-admin-password-not-a-secret").exists("ice-servers:{shared}:credential")


def assert_degraded_with_one_line(host, log_path, cause):
    """Check: served from the in-process cache, /readyz names redis (and stays ready), one line says why, no secret."""
    assert {r.json()["source"] for r in concurrent_get(host, 12)} == {"cloudflare"}
    ready = host.get("/readyz")
    assert ready.status_code == 200 and ready.json()["degraded"] == ["redis"]
    log = log_path.read_text()
    assert log.count(cause) >= 1
    assert "REDIS_URL (single server at 127.0.0.1" in log  # names Redis, not the URL
    assert "Traceback" not in log and ACL_PASSWORD not in log and "wrong-password" not in log


def test_a_certificate_that_does_not_verify_is_a_fault_not_a_crash(start_host, cloudflare, tls_redis, tmp_path):
    host = start_host(tls_env(cloudflare, tls_redis, ca_file=tls_redis.wrong_ca_file))
    assert_degraded_with_one_line(host, tmp_path / "host.log", "Redis's TLS certificate did not verify")


def test_a_wrong_password_is_a_fault_not_a_crash(start_host, cloudflare, tls_redis, tmp_path):
    host = start_host(tls_env(cloudflare, tls_redis, password="wrong-password-for-the-test"))
    assert_degraded_with_one_line(host, tmp_path / "host.log", "Redis refused the user or password in REDIS_URL (authentication)")


def test_sentinel_failover_under_load_drops_nothing(start_host, cloudflare, tmp_path):
    group = SentinelGroup(tmp_path / "sentinel").start()
    try:
        env = app_env(cloudflare.base_url, group.url)
        host_a, host_b = start_host(env, "a"), start_host(env, "b")
        served = []
        for host in (host_a, host_b):  # a worker that never served would rightly fetch its own while Redis is away
            wait_until(
                lambda host=host: served.extend(concurrent_get(host, 20)) or every_worker_holds_a_credential(host.log_path.read_text()),
                20,
                what="every worker holding the credential",
            )
        assert {turn_username(r) for r in served} == {"stub-user-1"}
        old_primary = group.current_primary_port()
        samples, killed = {}, {}

        def load(name, host):
            samples[name] = run_load(host, 14, clients=3)

        def failover():
            time.sleep(3)
            killed["at"] = time.monotonic()
            group.primary.kill()
            wait_until(lambda: group.current_primary_port() not in (None, old_primary), 30, interval=0.1, what="promotion")
            killed["promoted_after"] = time.monotonic() - killed["at"]

        threads = [threading.Thread(target=load, args=(n, h)) for n, h in (("a", host_a), ("b", host_b))]
        threads.append(threading.Thread(target=failover))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        everything = samples["a"] + samples["b"]
        assert len(everything) > 200
        assert [s for s in everything if s.status != 200] == []
        assert {s.body["source"] for s in everything} == {"cloudflare"}  # TURN served throughout
        assert cloudflare.call_count == 1  # holding a valid credential, nobody fetched because of the failover

        # refresh-turn works shortly after the promotion and both hosts serve the new credential within 10 s.
        refresh_reaches_both_hosts(env, cloudflare, (host_a, host_b))
        assert cloudflare.call_count == 2
        status = run_cli(env, "ice-status")
        assert f"primary 127.0.0.1:{group.current_primary_port()}" in status.stdout
        longest = max(s.latency for s in everything)
        print(f"sentinel promotion {killed['promoted_after']:.1f} s after SIGKILL; longest answer {longest:.3f} s")
    finally:
        group.stop()


def test_cluster_cold_burst_makes_one_call_and_refresh_reaches_both_hosts(start_host, cloudflare, redis_cluster):
    redis_cluster.flush()
    cloudflare.delay = 0.5
    env = app_env(cloudflare.base_url, redis_cluster.url)
    host_a, host_b = start_host(env, "a"), start_host(env, "b")
    with ThreadPoolExecutor(max_workers=2) as pool:
        bursts = list(pool.map(lambda host: concurrent_get(host, 60), (host_a, host_b)))
    answers = bursts[0] + bursts[1]
    assert [r.status_code for r in answers] == [200] * 120
    assert {turn_username(r) for r in answers} == {"stub-user-1"} and cloudflare.call_count == 1

    refresh_reaches_both_hosts(env, cloudflare, (host_a, host_b))
    status = run_cli(env, "ice-status")
    assert "cluster: state ok" in status.stdout
    ready = host_a.get("/readyz").json()
    assert ready["checks"] == {"redis": "ok", "upstream": "ok"} and ready["topology"].startswith("cluster: state ok")


def test_rate_limit_counts_exactly_on_the_cluster(start_host, cloudflare, redis_cluster):
    redis_cluster.flush()
    env = app_env(cloudflare.base_url, redis_cluster.url, ICE_RATE_LIMIT="50 per hour")
    host_a, host_b = start_host(env, "a"), start_host(env, "b")
    headers = {"X-Forwarded-For": "203.0.113.60"}
    answers = flood(lambda i: (host_a if i % 2 else host_b).get(headers=headers), 300)
    assert sum(r.status_code == 200 for r in answers) == 50 and sum(r.status_code == 429 for r in answers) == 250


def test_secrets_never_reach_the_log(start_host, cloudflare, tls_redis, tmp_path):
    host = start_host(tls_env(cloudflare, tls_redis))
    host.get()
    log = (tmp_path / "host.log").read_text()
    assert ACL_PASSWORD not in log and API_TOKEN not in log


def test_a_demoted_primary_and_a_flushed_script_cache_are_handled(sentinel_group):
    from app.core.errors import StoreUnavailable
    from app.core.ice import new_credential
    from app.store.redis import RedisStore

    credential = new_credential([{"urls": ["turn:t.example.test"], "username": "u", "credential": "c"}], "cloudflare", time.time(), 24, 12)
    replica = RedisStore(sentinel_group.replica.client())  # what a demoted primary answers writes with
    with pytest.raises(StoreUnavailable, match="READONLY"):
        replica.put(credential)
    sentinel_group.flush()
    primary = RedisStore.from_url(sentinel_group.url)
    assert primary.put(credential)
    redis.Redis(port=sentinel_group.current_primary_port()).script_flush()  # a restart or failover empties it: NOSCRIPT
    older = new_credential(list(credential.ice_servers), "cloudflare", credential.issued_at - 5, 24, 12)
    assert not primary.put(older) and primary.get() == credential  # the script was loaded again, ran, and refused it


def stopped(process):
    """Stop a redis-server with SIGSTOP (it hangs: connections open, nothing answers) until the block ends."""
    import contextlib
    import os
    import signal

    @contextlib.contextmanager
    def hanging():
        os.kill(process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(process.pid, signal.SIGCONT)

    return hanging()


def timed_failure(call) -> float:
    """Run ``call``, which must fail with StoreUnavailable or a Redis error; return the seconds it took."""
    from redis.exceptions import RedisClusterException

    from app.core.errors import StoreUnavailable

    started = time.monotonic()
    with pytest.raises((StoreUnavailable, redis.RedisError, RedisClusterException)):
        call()
    return time.monotonic() - started


@pytest.mark.parametrize("topology", ["single", "sentinel", "cluster"])
def test_a_hanging_redis_costs_one_socket_timeout_per_call_never_a_retry(topology, redis_server, sentinel_group, redis_cluster):
    # Failed before: redis-py retried a timeout once (1.0 s a call on one server), the cluster client three more times.
    from app.config.rates import parse_rates
    from app.config.redis_url import parse_redis_url
    from app.limits.shared import SharedLimit
    from app.store.connect import SOCKET_TIMEOUT, Connection
    from app.store.redis import RedisStore, store_key

    url = {"single": redis_server.url, "sentinel": sentinel_group.url, "cluster": redis_cluster.url}[topology]
    target = parse_redis_url(url)
    store, limiter = RedisStore.from_target(target), SharedLimit(Connection(target).client, parse_rates("10 per second"))
    store.snapshot(), limiter.check("warm")  # connections open and scripts loaded: the hang meets a pooled connection
    if topology == "single":
        node = redis_server.process
    elif topology == "sentinel":
        node = next(p for p in (sentinel_group.primary, sentinel_group.replica) if p.port == sentinel_group.current_primary_port()).process
    else:
        slot_owner = redis.RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port).get_node_from_key(store_key("credential"))
        node = next(n for n in redis_cluster.nodes if n.port == slot_owner.port).process
    # Each stop lasts under a second: shorter than the sentinels' down-after and the cluster's node timeout.
    with stopped(node):
        snapshot_took = timed_failure(store.snapshot)
    time.sleep(0.3)
    with stopped(node):
        check_took = timed_failure(lambda: limiter.check("caller"))
    assert snapshot_took < SOCKET_TIMEOUT + 0.4, snapshot_took
    assert check_took < SOCKET_TIMEOUT + 0.4, check_took
    wait_until(lambda: _answers_again(store), 10, what="redis answering again")


def _answers_again(store) -> bool:
    from app.core.errors import StoreUnavailable

    try:
        store.snapshot()
    except StoreUnavailable:
        return False
    return True


def test_silent_sentinels_cost_one_socket_timeout_each_never_redis_pys_ten_retries():
    # Failed before: the connections to the sentinels took redis-py's default retry (10 tries with backoff, timeouts
    # included) and a failed lookup was retried once more: about 9 s for one lookup, 20 s for a call.
    import socket

    from app.core.errors import StoreUnavailable
    from app.store.connect import SOCKET_TIMEOUT
    from app.store.redis import RedisStore

    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        store = RedisStore.from_url(f"redis+sentinel://127.0.0.1:{silent.getsockname()[1]}/ice")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.snapshot()
        assert time.monotonic() - started < 2 * SOCKET_TIMEOUT + 0.4
        assert "not answering" in store.describe() or "sentinel" in store.describe()


def test_a_cluster_down_at_start_is_a_store_failure_not_a_crash():
    from app.core.errors import StoreUnavailable
    from app.store.redis import RedisStore

    store = RedisStore.from_url("redis+cluster://127.0.0.1:1,127.0.0.1:2")
    for call in (store.ping, store.snapshot, lambda: store.read("usage")):
        with pytest.raises(StoreUnavailable):
            call()
