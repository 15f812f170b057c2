"""gunicorn settings for ice-servers.

Any of these can be overridden without editing this file, as usual with gunicorn:
    GUNICORN_CMD_ARGS="--bind 127.0.0.1:9000 --workers 4" .venv/bin/gunicorn -c gunicorn.conf.py wsgi:app
"""

import atexit
import multiprocessing
import os
import shutil
import tempfile

# Prometheus multiprocess mode: every worker writes its figures to files in this directory and
# /metrics sums them. It must be set before the app (and prometheus_client) is imported, which is
# why it is here. An operator may set PROMETHEUS_MULTIPROC_DIR; otherwise a private temp dir.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ice-servers-metrics-")
    _master_pid = os.getpid()
    # Removed when the master exits, also when the app refuses to start; workers inherit this
    # handler, hence the pid check.
    atexit.register(lambda: os.getpid() == _master_pid and shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], True))

# nginx (deploy/nginx/ice-servers.conf) proxies to this address; never expose gunicorn directly.
bind = "127.0.0.1:8000"

# Warm requests are short and CPU-bound: about two processes per core. Threads keep a worker
# answering health checks while one of its requests waits (at most ~6 s) for a cold-cache refill.
workers = multiprocessing.cpu_count() * 2 + 1
worker_class = "gthread"
threads = 4

# Build the app once in the master: a bad setting stops the start with one line before any
# worker forks, startup warnings are printed once, and workers share the loaded code.
preload_app = True

# One header line may be 16 KiB (gunicorn's default is 8190 bytes): a large JWT then reaches the
# app and gets its JSON 401, not gunicorn's HTML 400. nginx passes the same (large_client_header_buffers).
limit_request_field_size = 16384

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


def on_starting(server):
    """Start the metrics from zero: files left by an earlier run would be summed in."""
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(metrics_dir, exist_ok=True)
    for name in os.listdir(metrics_dir):
        if name.endswith(".db"):
            os.remove(os.path.join(metrics_dir, name))


def child_exit(server, worker):
    """Drop a dead worker's live gauges (its counters keep counting in the sums)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
