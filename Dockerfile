# ice-servers as an image: Debian's Python 3.11 (the one the project is tested on), non-root,
# read-only-friendly. Build: docker build -t ice-servers .   Run: docs/container.md.

# The build stage has pip and the venv tooling; only the finished venv and the code leave it.
FROM debian:bookworm-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /opt/ice-servers/requirements.txt
RUN python3 -m venv /opt/ice-servers/.venv \
    && /opt/ice-servers/.venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /opt/ice-servers/requirements.txt \
    && /opt/ice-servers/.venv/bin/pip uninstall --yes --quiet pip
COPY app /opt/ice-servers/app
COPY wsgi.py gunicorn.conf.py /opt/ice-servers/
# Compiled now: the running image's root filesystem may be read-only.
RUN python3 -m compileall -q /opt/ice-servers/app /opt/ice-servers/wsgi.py

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin ice-servers
COPY --from=build /opt/ice-servers /opt/ice-servers
WORKDIR /opt/ice-servers
# PORT: every address is bound (the platform's network is in front). ICE_ENV_FILE empty: settings
# come from the environment and *_FILE secrets, never from a .env baked into the image. gunicorn
# drains its workers within 8 s of a SIGTERM, inside `docker stop`'s 10.
ENV PATH=/opt/ice-servers/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8000 \
    ICE_ENV_FILE= \
    ICE_LOG_FORMAT=json \
    GUNICORN_CMD_ARGS="--graceful-timeout 8"
USER ice-servers
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
