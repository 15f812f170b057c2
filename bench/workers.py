"""How wrk's keep-alive connections and the CPU spread over gunicorn's workers, round by round.

    .venv/bin/python bench/workers.py                       # the floor under gunicorn.conf.py
    .venv/bin/python bench/workers.py "--workers 5"         # any other gunicorn options

Runs the floor app (bench/floor.py) under gunicorn.conf.py with the given options, then 8 rounds
of wrk (3 s, -c32); for each round it prints the throughput, the p99, the CPU seconds each worker
used and how many connections each held (sampled with `ss` mid-round). This is how the halved
rounds were traced to one worker holding every connection (README, "Performance").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import wrk  # noqa: E402 (after the path is set)
from tests.servers import Gunicorn, app_env  # noqa: E402

ROUNDS = 8
ROUND_SECONDS = 3


def cpu_seconds(pid: int) -> float:
    """Return the user and system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connections_per_worker(port: int) -> dict[int, int]:
    """Count the established connections on ``port`` per process."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True).stdout
    counts: dict[int, int] = {}
    for match in re.finditer(r"pid=(\d+)", out):
        counts[int(match.group(1))] = counts.get(int(match.group(1)), 0) + 1
    return counts


def main() -> int:
    """Start the floor, run the rounds, print a line per round."""
    args = sys.argv[1] if len(sys.argv) > 1 else ""
    with tempfile.TemporaryDirectory(prefix="ice-workers-") as tmp:
        body = Path(tmp) / "body.json"
        body.write_bytes(b'{"iceServers":[{"urls":["stun:stun.example.test:3478"]}],"ttl":86400}' * 4)
        floor = Gunicorn(app_env(None, None, FLOOR_BODY_FILE=str(body)), workers=None, app="bench.floor:app", args=args).start()
        try:
            time.sleep(2)  # every worker imports the app
            pids, url = floor.worker_pids(), f"{floor.base_url}/api/ice-servers"
            wrk(url, 1)
            print(f"floor, gunicorn.conf.py {args or '(as it is)'}: {len(pids)} workers, wrk -c32, {ROUND_SECONDS} s rounds")
            for number in range(1, ROUNDS + 1):
                before = {pid: cpu_seconds(pid) for pid in pids}
                sample: dict[int, int] = {}
                sampler = threading.Timer(ROUND_SECONDS / 2, lambda into=sample: into.update(connections_per_worker(floor.port)))
                sampler.start()
                run = wrk(url, ROUND_SECONDS)
                sampler.join()
                used = [round(cpu_seconds(pid) - before[pid], 2) for pid in pids]
                held = [sample.get(pid, 0) for pid in pids]
                print(f"round {number}: {run.rps:6.0f} req/s, p99 {run.p99_ms:6.2f} ms, CPU s per worker {used}, connections {held}")
        finally:
            floor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
