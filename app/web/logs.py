"""The app's log: one line per event on stderr (text), or one JSON object per line on stdout (json), with a request id.

Every request gets an id: a trusted proxy's X-Request-ID when it is a sane token, else a new one
(this process's random prefix and a counter: unique, and no system call per request). It is sent
back in X-Request-ID and carried by every JSON line logged while the request runs.
"""

from __future__ import annotations

import contextvars
import datetime
import itertools
import json
import logging
import os
import re
import sys

from app.access.addresses import Network, parse_address, trusted

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
REQUEST_ID = contextvars.ContextVar("request_id", default=None)
SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}", re.ASCII)


class JsonLines(logging.Formatter):
    """A record as one JSON object: time (UTC), level, logger, pid, message, request_id while a request runs."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one JSON object (never more than one line: json.dumps escapes newlines)."""
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text", alone: bool = False) -> None:
    """Send the app's log to stderr as text lines, or to stdout as JSON lines; once per process.

    ``alone`` (serverless): not also to the root logger, where the platform's runtime (awslambdaric,
    Vercel's) has a handler of its own that would write every line a second time.
    """
    logger = logging.getLogger("ice_servers")
    logger.setLevel(level)
    logger.propagate = not alone
    if not any(getattr(handler, "ice_servers", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stdout if log_format == "json" else sys.stderr)
        handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
        handler.ice_servers = True
        logger.addHandler(handler)


class RequestIds:
    """WSGI middleware, outermost: give the request its id, in the context of its log lines and in X-Request-ID."""

    def __init__(self, wsgi_app, proxies: tuple[Network, ...]):
        """Wrap ``wsgi_app``; an X-Request-ID is taken only from ``proxies`` (a client could otherwise forge log lines' ids)."""
        self.wsgi_app = wsgi_app
        self.proxies = proxies
        self._pid, self._prefix, self._counter = None, "", itertools.count(1)

    def __call__(self, environ, start_response):
        """Run the request with its id set; answer it in X-Request-ID."""
        given = environ.get("HTTP_X_REQUEST_ID", "")
        if given and SANE_ID.fullmatch(given) and trusted(parse_address(environ.get("REMOTE_ADDR")), self.proxies):
            request_id = given
        else:
            request_id = self._new_id()
        token = REQUEST_ID.set(request_id)

        def start(status, headers, exc_info=None):
            return start_response(status, [*headers, ("X-Request-ID", request_id)], exc_info)

        try:
            return self.wsgi_app(environ, start)
        finally:
            REQUEST_ID.reset(token)

    def _new_id(self) -> str:
        """Return a new id: a random prefix per process (made again after a fork) and a counter."""
        if self._pid != os.getpid():
            self._pid, self._prefix, self._counter = os.getpid(), os.urandom(6).hex(), itertools.count(1)
        return f"{self._prefix}-{next(self._counter):x}"
