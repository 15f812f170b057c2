"""make bench (the box): the one-box deployment as shipped against the Express peer, side by side, in one run.

The box: Debian's nginx with the shipped site (deploy/nginx/: TLS, the one-second micro-cache, the
per-address limit in front) before the app under gunicorn.conf.py with the default configuration
(the rate limit on, counted in Redis) and a real redis-server. The peer: what a second-guide user
runs today (bench/peer/server.js: Express under Node's cluster, as many processes as gunicorn has
workers, an in-process cache, plain HTTP, no limit). wrk -c16, 6 s rounds in turn, medians of 3,
each request from one of 10,000 client addresses (X-Forwarded-For from loopback, which both the
site and the app trust). Target (issue 34): the box at least 2.5x the peer's requests/s, with a p99
no higher than the peer's, and every answer a 200.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import MANY_CLIENTS, Bench, Run, verdict, wrk  # noqa: E402 (after the path is set)
from tests.nginx_site import NginxSite  # noqa: E402

ROUNDS = 3
ROUND_SECONDS = 6
CONNECTIONS = 16
TARGET_RPS_RATIO = 2.5


def main() -> int:
    """Measure and print; return 0 when the target is met."""
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk (make bench does it)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="ice-box-") as tmp:
        bench = Bench(Path(tmp))
        site = None
        try:
            app = bench.host("box", ICE_RATE_LIMIT="600 per minute")
            workdir = Path(tmp) / "nginx"
            workdir.mkdir()
            site = NginxSite(workdir, app.port, workers="auto").start()
            peer = bench.start_peer(len(app.worker_pids()))
            contenders = {
                "box (nginx site + app)": f"https://127.0.0.1:{site.https_port}/api/ice-servers",
                "Express peer": f"{peer}/api/ice-servers",
            }
            for url in contenders.values():
                wrk(url, 1, CONNECTIONS, clients=MANY_CLIENTS)  # warm: TLS sessions, connections, the caches
            print(
                f"the box against the Express peer: {os.cpu_count()} cores, wrk -c{CONNECTIONS}, {ROUNDS} rounds of {ROUND_SECONDS} s "
                f"in turn, {MANY_CLIENTS:,} client addresses; gunicorn {len(app.worker_pids())} workers, nginx worker_processes auto\n"
            )
            print(f"{'':28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
            runs: dict[str, list[Run]] = {name: [] for name in contenders}
            for round_number in range(1, ROUNDS + 1):
                for name, url in contenders.items():
                    run = wrk(url, ROUND_SECONDS, CONNECTIONS, clients=MANY_CLIENTS)
                    runs[name].append(run)
                    print(f"{name + ' ' + str(round_number):28}{run.rps:>10.0f}{run.p50_ms:>10.2f}{run.p99_ms:>10.2f}{run.errors:>8}")
            box, peer_runs = runs["box (nginx site + app)"], runs["Express peer"]
            box_rps, peer_rps = statistics.median(r.rps for r in box), statistics.median(r.rps for r in peer_runs)
            box_p99, peer_p99 = statistics.median(r.p99_ms for r in box), statistics.median(r.p99_ms for r in peer_runs)
            errors = sum(run.errors for run in box)
            ratio = box_rps / peer_rps
            met = ratio >= TARGET_RPS_RATIO and box_p99 <= peer_p99 and errors == 0
            print(
                f"\nmedians: box {box_rps:.0f} req/s, p99 {box_p99:.2f} ms; peer {peer_rps:.0f} req/s, p99 {peer_p99:.2f} ms\n"
                f"box/peer throughput {ratio:.2f} (target >= {TARGET_RPS_RATIO}: {verdict(ratio >= TARGET_RPS_RATIO)}), "
                f"p99 {box_p99 / peer_p99:.2f} of the peer's (target <= 1: {verdict(box_p99 <= peer_p99)}), "
                f"box errors or non-2xx: {errors} ({verdict(errors == 0)})"
            )
            return 0 if met else 1
        finally:
            if site is not None:
                site.stop()
            bench.stop()


if __name__ == "__main__":
    sys.exit(main())
