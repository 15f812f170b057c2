"""gunicorn settings for ice-servers.

Any of these can be overridden without editing this file, as usual with gunicorn:
    GUNICORN_CMD_ARGS="--bind 127.0.0.1:9000 --workers 4" .venv/bin/gunicorn -c gunicorn.conf.py wsgi:app
"""

import multiprocessing

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
