"""Real servers for the tests: redis-server and gunicorn on free loopback ports, stopped afterwards."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
TURN_SECRET = "test-turn-shared-secret"  # the static-auth-secret of the tests' coturn


# Each pytest-xdist worker takes its ports from a band of its own, below the kernel's ephemeral range
# (32768-60999), so two workers never pick the same port and no outgoing connection takes one. A
# cluster node's bus port (port + 10000) lands in 20000-28999, outside every band.
PORT_BAND = 1000
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
if int(_worker[2:]) >= 9:
    raise RuntimeError("at most 9 test workers: their port bands would overlap (TEST_WORKERS <= 9)")
_ports = itertools.cycle(range(10000 + PORT_BAND * int(_worker[2:]), 10000 + PORT_BAND * (int(_worker[2:]) + 1)))
_ports_lock = threading.Lock()
# Requests per second of run_load's clients together. Closed-loop clients ask as fast as they are answered: on
# two cores a load test then takes both (the client alone about a core: 970 req/s against two workers here), and
# every other test of the suite waits on it. 250 req/s is still thousands of requests a test.
LOAD_RATE = 250.0


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 (and UDP, for coturn) right now, from this worker's band."""
    with _ports_lock:
        for _ in range(PORT_BAND):
            port = next(_ports)
            if _bindable(port):
                return port
    raise RuntimeError(f"no free port in this test worker's band ({_worker})")


def _bindable(port: int) -> bool:
    """Tell whether ``port`` can be bound on 127.0.0.1 for TCP and UDP."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def wait_until(condition, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(interval)


def every_worker_holds_a_credential(log_text: str) -> bool:
    """Tell from gunicorn's log (ICE_LOG_LEVEL=DEBUG) whether every worker has read or fetched the credential."""
    ready = set(re.findall(r"Worker ready \(pid: (\d+)\)", log_text))
    holding = set(re.findall(r"\[(\d+)\] ice_servers: (?:Using cached|Generated new) Cloudflare TURN credentials", log_text))
    return bool(ready) and ready <= holding


class RedisServer:
    """A throwaway redis-server on loopback, without persistence."""

    def __init__(self, workdir: Path):
        """Pick a port; ``start`` runs the server."""
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Return the redis:// URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """Return a client to this server."""
        return redis.Redis(port=self.port, socket_timeout=2)

    def start(self) -> RedisServer:
        """Start on the same port as before and wait until it answers."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make test` (it installs it) or apt-get install redis-server")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10, what="redis-server start")
        return self

    def stop(self) -> None:
        """Kill the server (as a crash would) and wait for it."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def _answers(self) -> bool:
        """Tell whether the server answers PING."""
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False


class Gunicorn:
    """The app under its own gunicorn.conf.py, on a free port, with the given environment."""

    def __init__(self, env: dict[str, str], workers: int | None = 4, log_path: Path | None = None, args: str = "", app: str = "wsgi:app"):
        """Prepare; ``start`` runs it. ``workers`` None keeps gunicorn.conf.py's; ``args`` are more options."""
        self.args = args
        self.app = app
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> Gunicorn:
        """Start and wait until it answers /healthz and, with a log, until every worker has imported the app."""
        workers = f"--workers {self.workers}" if self.workers else ""
        env = {**clean_environ(), **self.env, "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{self.port} {workers} {self.args}"}
        offset = self.log_path.stat().st_size if self.log_path and self.log_path.exists() else 0
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", self.app],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        wait_until(self._healthy, 20, what="gunicorn start")
        if self.log_path and self.workers:  # workers import the app themselves (not preloaded): some start later
            wait_until(lambda: self._ready_workers(offset) >= self.workers, 30, what="every worker ready")
        return self

    def _ready_workers(self, offset: int) -> int:
        """Count the workers that logged "Worker ready" since this start."""
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().count(b"Worker ready")

    def stop(self) -> None:
        """Stop gracefully, then kill whatever is left of the process group."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)

    def worker_pids(self) -> list[int]:
        """Return the pids of the master's worker processes."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def get(self, path: str = "/api/ice-servers", **kwargs) -> requests.Response:
        """GET a path of this host."""
        return requests.get(self.base_url + path, timeout=kwargs.pop("timeout", 15), **kwargs)

    def _healthy(self) -> bool:
        """Tell whether /healthz answers 200."""
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {self.process.returncode}; see {self.log_path}")
        try:
            return requests.get(self.base_url + "/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False


def clean_environ() -> dict[str, str]:
    """Return the process environment without any ice-servers setting or .env, so tests set their own."""
    names = (
        "CLOUDFLARE_",
        "TURN_",
        "ICE_",
        "REDIS_URL",
        "CORS_ORIGINS",
        "STUN_URLS",
        "GUNICORN_CMD_ARGS",
    )
    platform = ("PORT", "WEB_CONCURRENCY")  # what a container platform sets: gunicorn.conf.py reads them
    kept = {k: v for k, v in os.environ.items() if not k.startswith(names) and k not in platform}
    return {**kept, "ICE_ENV_FILE": ""}


def app_env(cloudflare_base: str | None, redis_url: str | None, **extra: str) -> dict[str, str]:
    """Build the environment for the app talking to the stand-in and Redis."""
    from tests.cloudflare_stub import API_TOKEN, KEY_ID

    # Load tests come from one address: the rate limit is off unless a test sets ICE_RATE_LIMIT.
    env = {"ICE_LOG_LEVEL": "DEBUG", "ICE_RATE_LIMIT": "0"}
    if cloudflare_base:
        env.update(CLOUDFLARE_TURN_TOKEN_ID=KEY_ID, CLOUDFLARE_API_TOKEN=API_TOKEN, CLOUDFLARE_API_BASE=cloudflare_base)
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run ``flask --app wsgi ARGS`` in the repo with ``env``."""
    return subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "wsgi", *args],
        cwd=ROOT,
        env={**clean_environ(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def concurrent_get(host: Gunicorn, count: int) -> list[requests.Response]:
    """Send ``count`` requests at once; return the responses."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda _: host.get(), range(count)))


def flood(get: Callable[[int], requests.Response], count: int) -> list[requests.Response]:
    """Send ``count`` requests of one caller, 16 at a time; return every answer.

    GCRA lets exactly the limit through from idle, then one more every period / amount: tests flood with
    limits per hour (an interval of a minute or more), so the whole flood falls inside the first one.
    """
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(get, range(count)))


def turn_username(response: requests.Response) -> str | None:
    """Return the TURN username a response carries, or None."""
    return next((s["username"] for s in response.json()["iceServers"] if "username" in s), None)


@dataclass
class Sample:
    """One request of a load run."""

    sent_at: float  # time.time() when sent
    latency: float  # seconds
    status: int
    body: dict | None


def run_load(
    host: Gunicorn,
    seconds: float,
    clients: int = 8,
    samples: list | None = None,
    stop: threading.Event | None = None,
    addresses: int = 0,
    rate: float | None = LOAD_RATE,
) -> list[Sample]:
    """Keep ``clients`` keep-alive clients busy on /api/ice-servers for ``seconds``; return every sample.

    ``samples``: a list to append to as they come, and ``stop``: an event that ends the load sooner, for a
    test that acts on the load's progress. ``addresses``: forward that many client addresses in turn
    (X-Forwarded-For, trusted from loopback), as a proxy in front of many callers would. ``rate``: the
    requests per second of all clients together, each client on its own schedule (a client that falls
    behind goes on from where it is, without making up what it missed); None: each asks again the moment
    it has its answer.
    """
    samples = [] if samples is None else samples
    stop_at = time.monotonic() + seconds
    turns = itertools.count()
    interval = clients / rate if rate else 0.0

    def ended(wait: float = 0.0) -> bool:
        if stop is not None:
            return stop.wait(wait) or time.monotonic() >= stop_at
        time.sleep(wait)
        return time.monotonic() >= stop_at

    def client(index: int) -> None:
        next_at = time.monotonic() + interval * index / clients
        with requests.Session() as session:
            while not ended(max(0.0, next_at - time.monotonic()) if interval else 0.0):
                next_at = max(next_at, time.monotonic()) + interval
                sent_at, started = time.time(), time.monotonic()
                n = next(turns) % addresses if addresses else 0
                headers = {"X-Forwarded-For": f"198.51.{100 + n // 250}.{n % 250 + 1}"} if addresses else None
                try:
                    response = session.get(host.base_url + "/api/ice-servers", timeout=15, headers=headers)
                    status, body = response.status_code, response.json()
                except (requests.RequestException, ValueError):
                    status, body = 0, None
                samples.append(Sample(sent_at, time.monotonic() - started, status, body))

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(samples, key=lambda sample: sample.sent_at)


class Coturn:
    """Debian's coturn on loopback with a shared secret (use-auth-secret), as a deployment would run it."""

    def __init__(self, workdir: Path, secret: str):
        """Pick a listening port and a relay port range; ``start`` runs it."""
        self.port = free_port()
        self.secret = secret
        self.workdir = workdir
        # A 100-port relay range above the kernel's ephemeral ports (61000-65499), spread by the port so that
        # coturns of parallel test workers (whose bands start 1000 apart) rarely share one.
        self.relay_min = 61000 + ((self.port - 10000) % 45) * 100
        self.process: subprocess.Popen | None = None

    @property
    def turn_url(self) -> str:
        """Return the UDP TURN URL."""
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def start(self) -> Coturn:
        """Write its config and start it; wait until it answers STUN."""
        config = self.workdir / "turnserver.conf"
        config.write_text(
            "\n".join(
                [
                    "listening-ip=127.0.0.1",
                    f"listening-port={self.port}",
                    "relay-ip=127.0.0.1",
                    f"min-port={self.relay_min}",
                    f"max-port={self.relay_min + 99}",
                    "use-auth-secret",
                    f"static-auth-secret={self.secret}",
                    "realm=ice-servers.test",
                    "allow-loopback-peers",
                    "fingerprint",
                    "no-tls",
                    "no-dtls",
                    "no-cli",
                    f"pidfile={self.workdir}/turnserver.pid",
                    "log-file=stdout",
                    "simple-log",
                    "verbose",  # one line per allocation, with its username: the tests read them
                    "",
                ]
            )
        )
        binary = shutil.which("turnserver") or "/usr/bin/turnserver"
        self.log_path = self.workdir / "turnserver.log"
        self.process = subprocess.Popen([binary, "-c", str(config)], stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT)
        wait_until(self._answers_stun, 10, what="coturn start")
        return self

    def stop(self) -> None:
        """Stop it."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def _answers_stun(self) -> bool:
        """Send a STUN binding request; tell whether a response came."""
        if self.process.poll() is not None:
            raise RuntimeError(f"turnserver exited with {self.process.returncode}; see {self.log_path}")
        request = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, os.urandom(12))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            sock.sendto(request, ("127.0.0.1", self.port))
            try:
                return len(sock.recv(2048)) >= 20
            except OSError:
                return False
