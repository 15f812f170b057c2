"""make bench (serverless): the cold start of the function `vercel build` makes, with and without bytecode, on Python 3.12.

Builds the tree twice with the pinned CLI (docs/serverless.md): as Vercel builds it by default (no
.pyc: PYTHONDONTWRITEBYTECODE=1, every import compiles its module again), and with the project
setting VERCEL_PYTHON_COMPILEALL=1 (the build ships bytecode). Then starts fresh instances of each,
alternately, as Vercel's runtime starts them, against a real redis-server that already holds the
credential (a warm Redis) and the Cloudflare stand-in, and times the import (to the runtime's
``server-started``) and the first answer of GET /api/ice-servers. Prints medians and the ratio.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cloudflare_stub import CloudflareStub  # noqa: E402 (after the path is set)
from tests.servers import RedisServer, app_env  # noqa: E402
from tests.vercel_runtime import VercelFunction, python312, vercel_build  # noqa: E402

ROUNDS = 9


def cold_start(function_dir: Path, env: dict[str, str], workdir: Path, name: str) -> tuple[float, float]:
    """Start one instance; return the seconds to its server-started and to its first answer."""
    function = VercelFunction(function_dir, env, workdir, name)
    began = time.perf_counter()
    try:
        function.start()
        started = time.perf_counter() - began
        answer = function.request("GET", "/api/ice-servers", "203.0.113.1")
        answered = time.perf_counter() - began
        if answer.status_code != 200 or "turn:" not in answer.text:
            raise RuntimeError(f"the first answer was {answer.status_code}: {answer.text[:200]}")
    finally:
        function.stop()
    return started, answered


def main() -> int:
    """Build both, time the cold starts, print the table."""
    print(f"Python {python312()}; {ROUNDS} cold starts of each build, alternating")
    with tempfile.TemporaryDirectory(prefix="ice-cold-") as tmp, CloudflareStub() as cloudflare:
        workdir = Path(tmp)
        redis_server = RedisServer(workdir).start()
        try:
            builds = {}
            for label, bytecode in (("default (no .pyc)", False), ("VERCEL_PYTHON_COMPILEALL=1", True)):
                function_dir, done = vercel_build(workdir / ("bytecode" if bytecode else "plain"), bytecode=bytecode)
                if done.returncode != 0:
                    print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
                    return 1
                pyc = sum(1 for _ in function_dir.rglob("*.pyc"))
                builds[label] = function_dir
                print(f"  {label}: {pyc} .pyc files in the function")
            env = app_env(cloudflare.base_url, redis_server.url, ICE_LOG_LEVEL="WARNING")
            cold_start(next(iter(builds.values())), env, workdir, "warm-up")  # fills Redis: every timed start finds it warm
            times: dict[str, list[tuple[float, float]]] = {label: [] for label in builds}
            for round_number in range(ROUNDS):
                for label, function_dir in builds.items():
                    times[label].append(cold_start(function_dir, env, workdir, f"r{round_number}"))
            print(f"\n{'build':<30} {'import (s)':>11} {'first answer (s)':>17}")
            medians = {}
            for label, samples in times.items():
                medians[label] = statistics.median(s[1] for s in samples)
                print(f"{label:<30} {statistics.median(s[0] for s in samples):>11.3f} {medians[label]:>17.3f}")
            plain, compiled = medians.values()
            print(f"\nfirst answer, bytecode vs default: {compiled / plain:.2f}x the time ({plain / compiled:.2f}x faster)")
            print(f"Upstream calls: {cloudflare.call_count} (the warm-up's only)")
        finally:
            redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
