"""WSGI middleware below Flask: the client's address behind trusted proxies, and requests refused before anything parses them."""

from __future__ import annotations

import json
import logging

from app.access.addresses import Network, client_address, parse_address, trusted
from app.core.numbers import parse_digits

log = logging.getLogger("ice_servers")

# On every answer but the static files: a credential is a secret that changes, so no browser, proxy or
# CDN may store one (a stored answer hands a stale, revoked or another user's credential to fetch()).
NO_STORE = "no-store"


class TrustedProxies:
    """WSGI middleware: the client's address and scheme, from X-Forwarded-For/-Proto of trusted proxies only.

    Every other peer is its own address, whatever headers it sends (app/client_address.py).
    """

    def __init__(self, wsgi_app, proxies: tuple[Network, ...]):
        """Wrap ``wsgi_app``."""
        self.wsgi_app = wsgi_app
        self.proxies = proxies

    def __call__(self, environ, start_response):
        """Rewrite REMOTE_ADDR to the client's address, and wsgi.url_scheme to a trusted proxy's X-Forwarded-Proto."""
        peer = environ.get("REMOTE_ADDR")
        environ["REMOTE_ADDR"] = client_address(peer, environ.get("HTTP_X_FORWARDED_FOR"), self.proxies) or ""
        if trusted(parse_address(peer), self.proxies):
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
        return self.wsgi_app(environ, start_response)


class RequestLimits:
    """WSGI middleware: refuse what is too large or undecodable before Flask parses anything.

    A declared body over the limit (413), a query string over MAX_QUERY (414), a path or query that
    is not UTF-8 (400); each a one-line JSON error. Bodies without a Content-Length (chunked) are
    cut by Flask's MAX_CONTENT_LENGTH when read; header sizes are bounded by gunicorn and nginx.
    """

    MAX_QUERY = 2048

    def __init__(self, wsgi_app, max_body: int, cors_headers=None):
        """Wrap ``wsgi_app``; ``cors_headers(origin)``: the CORS headers of an answer (an allowed origin's fetch() reads the refusal)."""
        self.wsgi_app = wsgi_app
        self.max_body = max_body
        self.cors_headers = cors_headers or (lambda origin: [])

    def __call__(self, environ, start_response):
        """Refuse a request over the limits; pass everything else on."""
        cors = self.cors_headers(environ.get("HTTP_ORIGIN"))
        length = environ.get("CONTENT_LENGTH")
        declared = parse_digits(length) if length else 0
        if declared is None:
            return _refuse(start_response, 400, "Content-Length is not a number", cors)
        if declared > self.max_body:
            return _refuse(start_response, 413, f"request body larger than {self.max_body // 1024} KiB", cors)
        query = environ.get("QUERY_STRING", "")
        if len(query) > self.MAX_QUERY:
            return _refuse(start_response, 414, f"query string longer than {self.MAX_QUERY} bytes", cors)
        try:  # WSGI carries them as latin-1 text holding the raw bytes
            environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
            query.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return _refuse(start_response, 400, "request path or query string is not UTF-8", cors)
        return self.wsgi_app(environ, start_response)


def _refuse(start_response, status: int, message: str, cors: list[tuple[str, str]] = ()) -> list[bytes]:
    """Answer a JSON error straight from WSGI, with the CORS headers of the request's origin."""
    body = json.dumps({"error": message, "status": status}).encode()
    reason = {400: "Bad Request", 413: "Request Entity Too Large", 414: "URI Too Long"}[status]
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", NO_STORE),
        ("Connection", "close"),
        *cors,
    ]
    start_response(f"{status} {reason}", headers)
    return [body]
