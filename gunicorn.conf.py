"""gunicorn settings for ice-servers.

Any of these can be overridden without editing this file, as usual with gunicorn:
    GUNICORN_CMD_ARGS="--bind 127.0.0.1:9000 --workers 4" .venv/bin/gunicorn -c gunicorn.conf.py wsgi:app
"""

import atexit
import datetime
import glob
import json
import logging
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.abspath(__file__))

# Prometheus multiprocess mode: every worker writes its figures to files in this directory and
# /metrics sums them. It must be set before the app (and prometheus_client) is imported, which is
# why it is here. An operator may set PROMETHEUS_MULTIPROC_DIR; otherwise a private temp dir.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ice-servers-metrics-")
    _master_pid = os.getpid()
    # Removed when the master exits, also when the app refuses to start; workers inherit this
    # handler, hence the pid check.
    atexit.register(lambda: os.getpid() == _master_pid and shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], True))


def _whole_number(name, low, high):
    """Read a platform's number (PORT, WEB_CONCURRENCY): ASCII digits within [low, high], else stop with one line."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdecimal() and low <= int(raw) <= high):
        print(f"ice-servers: {name} must be a whole number from {low} to {high}, got {raw[:20]!r}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    return int(raw)


# nginx (deploy/nginx/ice-servers.conf) proxies to 127.0.0.1:8000; never expose gunicorn directly on a
# box. A container platform sets PORT (the image sets 8000), and then every address is bound: the
# platform's network is in front (docs/container.md).
PORT = _whole_number("PORT", 1, 65535)
bind = "127.0.0.1:8000" if PORT is None else f"0.0.0.0:{PORT}"

# Warm requests are short and CPU-bound: one process per core (at least two, so a reload or a
# crash never leaves nobody answering). Threads keep a worker answering health checks while one of
# its requests waits (at most ~6 s) for a cold-cache refill. Measured with `make bench` on 2 cores
# (README, "Performance"): more processes than cores time-share them, and the p99 grows by half
# for no more throughput; sync workers answer as fast but close every connection, and one waiting
# request blocks a whole worker; 8 threads per worker were no faster than 4.
# WEB_CONCURRENCY, as platforms set it, is the number of workers.
workers = _whole_number("WEB_CONCURRENCY", 1, 64) or max(2, multiprocessing.cpu_count())
worker_class = "gthread"
threads = 4

# Not preloaded: a HUP (`pm2 sendSignal SIGHUP ice-servers`, `systemctl reload ice-servers`) starts
# new workers that import the new code and get the new .env while the old ones finish their
# requests, and the listening socket never closes. The master never imports the app (its workers
# would inherit the old code); it checks the settings in a subprocess instead, at start (a bad one
# stops gunicorn with one line) and on every reload (the last good settings stay in force, and one
# line says why). Workers get the checked .env values in their environment and read no file.
preload_app = False

# One header line may be 16 KiB (gunicorn's default is 8190 bytes): a large JWT then reaches the
# app and gets its JSON 401, not gunicorn's HTML 400. nginx passes the same (large_client_header_buffers).
limit_request_field_size = 16384

# A keep-alive connection (nginx keeps 16 open per nginx worker; a load generator keeps its own)
# stays with the worker that accepted it, and one worker can hold them all while the others idle:
# measured, the throughput then halves for as long as the connections last. Each request closes its
# connection with this probability, so the client reconnects, and an idle worker, first to accept,
# takes it: the connections spread over the workers within a second or two.
KEEPALIVE_REBALANCE = 1 / 64

# New workers of one reload that may die in a row, before they are ready, before the reload is reported as failed.
RELOAD_HANDOVERS = 3

# Seconds a silent worker lives before it is replaced, and that a stopping worker gets to finish.
timeout = 30
graceful_timeout = 20
# Seconds an idle keep-alive connection (from nginx) stays open.
keepalive = 5

# No gunicornc control socket: nothing here uses it, and under systemd's ProtectSystem its
# default path in $HOME is not writable.
control_socket_disable = True

# Errors and app logs go to stderr, where pm2 and journald collect them. Access logs are off;
# turn them on with GUNICORN_CMD_ARGS="--access-logfile -".
errorlog = "-"
loglevel = "info"


class JsonLines(logging.Formatter):
    """gunicorn's own lines as JSON objects, one per line, with the keys of the app's (app/web/logs.py).

    Written here, not imported from the app: the master imports nothing of it (see preload_app).
    """

    def format(self, record):
        """Return the record as one JSON object."""
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


# ICE_LOG_FORMAT=json (the container image's default): every line on stdout is a JSON object,
# gunicorn's and the app's; the root logger prints nothing (the app's logger has its own handler).
if os.environ.get("ICE_LOG_FORMAT", "").strip().lower() == "json":
    logconfig_dict = {
        "root": {"level": "WARNING", "handlers": []},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["json"], "propagate": False, "qualname": "gunicorn.error"},
            "gunicorn.access": {"level": "INFO", "handlers": ["json"], "propagate": False, "qualname": "gunicorn.access"},
        },
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
        "formatters": {"json": {"()": JsonLines}},
    }


def on_starting(server):
    """Refuse to start on a bad setting (one line); start the metrics from zero."""
    server.ice_env_file = os.environ.get("ICE_ENV_FILE")  # the operator's, before the workers' is set
    problem = _take_settings(server)
    if problem:
        print(problem, file=sys.stderr, flush=True)
        raise SystemExit(1)
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(metrics_dir, exist_ok=True)
    for name in os.listdir(metrics_dir):
        if name.endswith(".db"):
            os.remove(os.path.join(metrics_dir, name))


def on_reload(server):
    """Give the new workers the new settings (or keep the last good ones), and keep the old workers until they are ready.

    gunicorn retires the old workers as soon as the new ones are forked, seconds before those have
    imported the app: nobody would answer meanwhile. So both generations run, and each new worker,
    once it is ready, stops its share of the old ones (gracefully: they finish their requests).
    """
    problem = _take_settings(server)
    if problem:
        server.log.error("%s; the running settings stay in force: fix .env and reload again", problem)
    old = list(server.WORKERS)
    broken = _code_problem()
    if broken:
        # New workers would fail to boot, and one that fails to boot stops gunicorn: keep the running ones.
        server.log.error("%s; the running workers stay: fix the code and reload again", broken)
        server.cfg.set("workers", 0)  # nothing is forked by this reload (the next one reads the setting again)
        server.num_workers, server.ice_retiring, server.ice_handovers = len(old), set(), []
        return
    if not problem:
        server.log.info("Reloading: new workers start with the current code and .env")
    server.num_workers = len(old) + server.cfg.workers
    server.ice_retiring = set(old)
    shares = server.cfg.workers
    server.ice_handovers = [(old[index::shares], 0) for index in range(shares)]


def pre_fork(server, worker):
    """Hand a worker that a reload starts its share of the old workers to stop once it is ready."""
    handovers = getattr(server, "ice_handovers", None)
    worker.ice_retire, worker.ice_handover_tries = handovers.pop() if handovers else ([], 0)


def post_worker_init(worker):
    """Say this worker is ready (it imported the app), and stop its share of the old ones after a reload."""
    worker.log.info("Worker ready (pid: %s)", worker.pid)
    for pid in getattr(worker, "ice_retire", []):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def pre_request(worker, req):
    """Now and then, answer with "Connection: close", so keep-alive connections rebalance over the workers."""
    if random.random() < KEEPALIVE_REBALANCE:
        req.force_close()


def _take_settings(server):
    """Check the settings in a subprocess; on success put the .env values into the workers' environment.

    Return None, or the one-line reason the settings were refused.
    """
    applied = getattr(server, "ice_dotenv", {})
    # What the operator's environment says, without the values an earlier .env put there.
    base = {name: value for name, value in os.environ.items() if not (name in applied and applied[name] == value)}
    base.pop("ICE_ENV_FILE", None)
    if server.ice_env_file is not None:
        base["ICE_ENV_FILE"] = server.ice_env_file
    try:
        returncode, stderr, handed = _run_settings_check(base)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return f"ice-servers: the settings check did not run ({type(exc).__name__})"
    if returncode != 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"ice-servers: the settings check failed (exit {returncode})"
    result = json.loads(handed)
    for name, value in applied.items():
        if os.environ.get(name) == value:
            del os.environ[name]
    taken = {name: value for name, value in result["values"].items() if name not in base}  # the real environment wins
    os.environ.update(taken)
    os.environ["ICE_ENV_FILE"] = ""  # the workers take the checked values, not the file as it may be by then
    server.ice_dotenv = taken
    for warning in result["warnings"]:
        server.log.warning(warning)
    return None


def _run_settings_check(env):
    """Run ``python -m app.settings_check --handover-fd N`` on a pipe of ours; return (exit code, stderr, the JSON handed over).

    The values (secrets among them) come on the pipe, never on the child's stdout or stderr.
    """
    read_fd, write_fd = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "app.settings_check", "--handover-fd", str(write_fd)],
            env=env,
            cwd=ROOT,
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    except OSError:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    handed = []
    with os.fdopen(read_fd) as pipe:
        reader = threading.Thread(target=lambda: handed.append(pipe.read()), daemon=True)  # read while it writes: no full pipe
        reader.start()
        try:
            _, stderr = child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise
        reader.join(5)
    return child.returncode, stderr, handed[0] if handed else ""


def _code_problem():
    """Import and build the app as a new worker would, in a subprocess; return None, or the one-line reason it fails."""
    try:
        check = subprocess.run(
            [sys.executable, "-c", "import wsgi"], env=dict(os.environ), cwd=os.getcwd(), capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ice-servers: the new code could not be checked ({type(exc).__name__})"
    if check.returncode == 0:
        return None
    lines = [line.strip() for line in check.stderr.splitlines() if line.strip()]
    return f"ice-servers: the new code does not start: {lines[-1] if lines else f'exit {check.returncode}'}"


def child_exit(server, worker):
    """Drop a dead worker's live gauges (its counters keep counting in the sums); an old worker is not replaced.

    What prometheus_client's mark_process_dead does, without importing it: the master imports nothing
    of the app's dependencies, so a reload's new workers get them from the release they start in.
    A reload's new worker that dies before it stopped its share of the old ones hands that share to
    a worker forked in its place at once, so a reload is never left half done (old code serving for
    good), and the old ones serve until that worker is ready. At once: gunicorn's reload waits up to
    the graceful timeout for the old workers to go before it forks any other.
    """
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], f"gauge_live*_{worker.pid}.db")):
        os.remove(path)
    retiring = getattr(server, "ice_retiring", set())
    if worker.pid in retiring:
        retiring.discard(worker.pid)
        server.num_workers -= 1
        return
    share = [pid for pid in getattr(worker, "ice_retire", []) if pid in retiring]
    if not share or not server.LISTENERS:  # nothing left to hand over, or gunicorn is stopping (it closed its sockets)
        return
    tries = getattr(worker, "ice_handover_tries", 0) + 1
    if tries > RELOAD_HANDOVERS:
        # The new release's workers keep dying before they are ready: the reload failed. The old workers of this
        # share keep serving in the dead one's place (one fewer to respawn), and one line says so.
        server.num_workers -= 1
        server.log.error(
            "Reload failed: %d new workers in a row died before they were ready; %d old worker(s) keep serving the "
            "previous code and settings. Check the log above, fix, and reload again",
            tries,
            len(share),
        )
        return
    server.log.warning(
        "Reload: new worker %s died before stopping %d old worker(s); a worker started in its place takes them over",
        worker.pid,
        len(share),
    )
    server.ice_handovers = [*getattr(server, "ice_handovers", []), (share, tries)]
    server.spawn_worker()  # pre_fork hands it the share; in the forked child this call never returns
