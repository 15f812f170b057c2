"""The egress ceiling on real parts: two gunicorn hosts on one redis-server, the Cloudflare and GraphQL stand-ins."""

import time

import pytest

from tests.cloudflare_stub import API_TOKEN, KEY_ID
from tests.graphql_stub import ACCOUNT_ID, ANALYTICS_TOKEN, GraphqlStub
from tests.servers import app_env, concurrent_get, run_cli, wait_until

GB = 1_000_000_000
INTERVAL = 1
SWITCH_BUDGET = INTERVAL + 4  # one interval plus a few seconds
TURN_SECRET = {"TURN_SHARED_SECRET": "test-coturn-secret-not-a-secret", "TURN_URLS": "turn:own.example.test:3478?transport=udp"}
PAST = "past ICE_EGRESS_LIMIT_GB=1: not handing out Cloudflare credentials"
UNDER_AGAIN = "under ICE_EGRESS_LIMIT_GB=1: handing out Cloudflare credentials again"
STATIC = '[{"urls": ["turn:static.example.test:3478"], "username": "static-user", "credential": "static-password"}]'


@pytest.fixture
def graphql():
    with GraphqlStub() as stub:
        yield stub


def ceiling_env(cloudflare, graphql, redis_url, **extra):
    """Cap Cloudflare at 1 GB a month, read every second."""
    return app_env(
        cloudflare.base_url,
        redis_url,
        ICE_EGRESS_LIMIT_GB="1",
        CLOUDFLARE_ACCOUNT_ID=ACCOUNT_ID,
        CLOUDFLARE_ANALYTICS_TOKEN=ANALYTICS_TOKEN,
        CLOUDFLARE_GRAPHQL_URL=graphql.url,
        ICE_USAGE_CHECK_INTERVAL=str(INTERVAL),
        **extra,
    )


def sources(*hosts, count=24):
    """Return the sources that ``count`` concurrent requests to each host got (every worker answers some)."""
    return {response.json()["source"] for host in hosts for response in concurrent_get(host, count)}


def switched(tmp_path, line: str, since: dict) -> int:
    """Count the worker processes of both hosts that logged ``line`` after the log offsets ``since``."""
    pids = set()
    for path in tmp_path.glob("*.log"):
        with open(path) as log:
            log.seek(since.get(path, 0))
            pids |= {entry.split("[", 1)[1].split("]", 1)[0] for entry in log if line in entry}
    return len(pids)


def log_offsets(tmp_path) -> dict:
    return {path: path.stat().st_size for path in tmp_path.glob("*.log")}


def metric(text, name):
    lines = [line for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{")]
    return [float(line.rsplit(" ", 1)[1]) for line in lines]


def test_crossing_the_limit_switches_the_fleet_to_the_next_provider_and_back(start_host, cloudflare, graphql, redis_url, tmp_path):
    graphql.egress = GB // 2
    env = ceiling_env(cloudflare, graphql, redis_url, **TURN_SECRET)
    host_a, host_b = start_host(env, "a"), start_host(env, "b")
    wait_until(lambda: sources(host_a, host_b) == {"cloudflare"}, 10, what="Cloudflare credentials under the limit")
    cloudflare_user = {r.json()["iceServers"][1]["username"] for r in concurrent_get(host_a, 8)}
    assert cloudflare.call_count == 1

    # About one query per interval over the whole fleet while it serves, each for the right account, key and month.
    graphql.queries.clear()
    started = time.monotonic()
    while time.monotonic() - started < 6:
        sources(host_a, host_b, count=4)
    elapsed = time.monotonic() - started
    assert elapsed / INTERVAL - 2 <= graphql.count <= elapsed / INTERVAL + 2
    month = time.strftime("%Y-%m-01", time.gmtime())
    assert {(q["account"], q["keyId"], q["date_geq"]) for q in graphql.queries} == {(ACCOUNT_ID, KEY_ID, month)}

    graphql.egress = 2 * GB
    crossed, offsets = time.monotonic(), log_offsets(tmp_path)
    # Every worker of both hosts says it switched (a round of requests need not reach each of the eight).
    wait_until(
        lambda: sources(host_a, host_b) == {"turn-secret"} and switched(tmp_path, PAST, offsets) >= 8,
        SWITCH_BUDGET,
        interval=0.1,
        what="every worker past the limit",
    )
    switch = time.monotonic() - crossed
    calls, readings = cloudflare.call_count, graphql.count

    def two_more_readings_past_the_limit():
        assert sources(host_a, host_b, count=8) == {"turn-secret"}
        return graphql.count >= readings + 2

    wait_until(two_more_readings_past_the_limit, 2 * INTERVAL + 5, interval=0.2, what="two more readings")
    assert cloudflare.call_count == calls == 1  # no refill, no refresh ahead while over

    text = host_a.get("/metrics").text
    assert metric(text, "ice_turn_egress_bytes") == [2 * GB] and metric(text, "ice_turn_egress_limit_bytes") == [GB]
    status = run_cli(env, "ice-status")
    assert status.returncode == 0, status.stderr
    egress_lines = [line for line in status.stdout.splitlines() if line.startswith("Egress:")]
    assert len(egress_lines) == 1 and egress_lines[0].startswith("Egress:       2.000 GB of 1 GB since")
    assert egress_lines[0].endswith("past the limit: no Cloudflare credential is handed out")
    assert host_a.get("/readyz").status_code == 200  # a policy, not an outage

    graphql.egress = GB // 10  # a raised limit, or a new month
    offsets = log_offsets(tmp_path)
    wait_until(
        lambda: sources(host_a, host_b) == {"cloudflare"} and switched(tmp_path, UNDER_AGAIN, offsets) >= 8,
        SWITCH_BUDGET,
        interval=0.1,
        what="Cloudflare again",
    )
    assert {r.json()["iceServers"][1]["username"] for r in concurrent_get(host_b, 8)} == cloudflare_user
    assert cloudflare.call_count == 1

    logs = "".join(path.read_text() for path in tmp_path.glob("*.log")) + status.stdout + status.stderr + text
    assert PAST in logs and UNDER_AGAIN in logs
    for secret in (ANALYTICS_TOKEN, API_TOKEN, "stub-password", "test-coturn-secret"):
        assert secret not in logs
    print(f"switch to the next provider took {switch:.2f} s")


def test_past_the_limit_without_a_second_provider_the_answer_is_static(start_host, cloudflare, graphql, redis_url):
    graphql.egress = 5 * GB
    host = start_host(ceiling_env(cloudflare, graphql, redis_url, TURN_SERVERS=STATIC, ICE_USAGE_UNKNOWN="closed"))
    assert sources(host) == {"static"}

    def read_again():  # readings are taken as requests come, one per interval fleet-wide
        assert sources(host, count=4) == {"static"}
        return graphql.count >= 2

    wait_until(read_again, INTERVAL + 5, interval=0.2, what="a second reading")
    assert sources(host) == {"static"} and cloudflare.call_count == 0


@pytest.mark.parametrize(("unknown", "source"), [("open", "cloudflare"), ("closed", "static")])
def test_with_the_analytics_down_open_serves_cloudflare_and_closed_does_not(
    start_host, cloudflare, graphql, redis_url, tmp_path, unknown, source
):
    graphql.mode = "error500"
    host = start_host(ceiling_env(cloudflare, graphql, redis_url, TURN_SERVERS=STATIC, ICE_USAGE_UNKNOWN=unknown))
    assert sources(host) == {source}  # from the very first request

    def failed_thrice():  # past three intervals the last reading (none here) no longer counts: ICE_USAGE_UNKNOWN decides
        assert sources(host, count=4) == {source}
        return graphql.count >= 3

    wait_until(failed_thrice, 3 * INTERVAL + 5, interval=0.2, what="three failed readings")
    assert sources(host) == {source}
    assert cloudflare.call_count == (1 if unknown == "open" else 0)
    log = (tmp_path / "host.log").read_text()
    assert "Could not read TURN usage from Cloudflare's analytics API: the analytics API answered 500" in log
    assert ANALYTICS_TOKEN not in log


def test_a_hanging_analytics_api_never_holds_a_request(start_host, cloudflare, graphql, redis_url):
    graphql.mode = "hang"
    host = start_host(ceiling_env(cloudflare, graphql, redis_url))
    started = time.monotonic()

    def asked_again():
        answered = time.monotonic()
        assert sources(host, count=16) == {"cloudflare"}
        assert time.monotonic() - answered < 2  # no request waits for the hanging query
        return graphql.count >= 2  # asked again the next interval although the first query still hangs

    wait_until(asked_again, 2 * INTERVAL + 5, interval=0.2, what="a second query")
    assert time.monotonic() - started < 2 * INTERVAL + 5
