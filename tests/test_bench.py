"""The benchmark's own logic (make bench measures; make test only checks that it measures right)."""

import pytest

from bench.run import Run, parse_wrk, percentile, ratios, wrk
from tests.servers import Gunicorn, app_env

pytestmark = pytest.mark.integration

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:8000/api/ice-servers
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.12ms    2.01ms  40.10ms   90.00%
{"requests": 6000, "duration_us": 1500000, "errors": 2, "non_2xx": 1, "p50_us": 4100, "p99_us": 12500, "max_us": 40100}
"""


def test_parse_wrk_reads_the_report_line():
    run = parse_wrk(WRK_OUTPUT)
    assert run == Run(requests=6000, rps=4000.0, p50_ms=4.1, p99_ms=12.5, max_ms=40.1, errors=3)


def test_ratios_are_medians_of_per_round_ratios():
    def run(rps, p99):
        return Run(requests=0, rps=rps, p50_ms=0, p99_ms=p99, max_ms=0, errors=0)

    app = [run(90, 10), run(100, 30), run(95, 12)]
    floor = [run(100, 10), run(100, 10), run(100, 10)]
    assert ratios(app, floor) == pytest.approx((0.95, 1.2))


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 0.99) == 99 and percentile(values, 0.5) == 50 and percentile([7], 0.99) == 7


def test_floor_serves_the_apps_answer_with_the_same_headers(tmp_path, cloudflare, redis_url):
    app = Gunicorn(app_env(cloudflare.base_url, redis_url), workers=1, log_path=tmp_path / "app.log").start()
    try:
        answer = app.get()
        (tmp_path / "body.json").write_bytes(answer.content)
        env = {"FLOOR_BODY_FILE": str(tmp_path / "body.json"), "FLOOR_CACHE_CONTROL": answer.headers["Cache-Control"]}
        floor = Gunicorn(env, workers=1, log_path=tmp_path / "floor.log", app="bench.floor:app").start()
        try:
            same = floor.get()
            assert same.content == answer.content
            for header in ("Content-Type", "Cache-Control", "Content-Length"):
                assert same.headers[header] == answer.headers[header]
            run = wrk(f"{floor.base_url}/api/ice-servers", 1, connections=4)  # the real wrk, with bench/report.lua
            assert run.requests > 0 and run.errors == 0 and 0 < run.p50_ms <= run.p99_ms <= run.max_ms
        finally:
            floor.stop()
    finally:
        app.stop()


def test_the_node_peer_serves_cloudflares_answer_from_its_cache(cloudflare):
    """The Express peer of `make bench` answers from each process's cache: at most one upstream call per process."""
    import os
    import subprocess
    import urllib.request

    from tests.servers import ROOT, free_port, wait_until

    port = free_port()
    env = {
        **app_env(cloudflare.base_url, None),
        "PATH": os.environ["PATH"],
        "NODE_PATH": str(ROOT / ".tools" / "node_modules"),
        "PEER_WORKERS": "2",
        "PEER_PORT": str(port),
    }
    peer = subprocess.Popen(["node", str(ROOT / "bench" / "peer" / "server.js")], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert "peer ready: 2 workers" in peer.stdout.readline()
        url = f"http://127.0.0.1:{port}/api/ice-servers"
        wait_until(lambda: urllib.request.urlopen(url, timeout=5).status == 200, 10, what="the peer answering")
        bodies = {urllib.request.urlopen(url, timeout=5).read() for _ in range(40)}
        # a credential per process, as per-process caches have it (ours is shared through Redis)
        assert 1 <= len(bodies) <= 2 and all(b'"iceServers"' in body for body in bodies)
        assert len(bodies) <= cloudflare.call_count <= 2
    finally:
        peer.terminate()
        peer.wait(10)
