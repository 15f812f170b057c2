"""GET /api/ice-servers and POST /api/turn-credentials, for every access mode: the one implementation, below Flask.

Flask's request context, routing and response objects cost more than the rest of a warm request
together, so the two credential routes are a WSGI layer of their own, in front of the Flask app
(which serves everything else). Each request takes the same steps in every mode:

1. CORS: a preflight is answered here (never counted); an answer to an allowed origin echoes it.
2. The rate limit, by the client's address (its /64 for IPv6), before any token is looked at.
3. The access gate of ICE_ACCESS_MODE (app/access/gates.py): a 401 or 403, or the verified user.
4. In jwt mode, the rate limit again, by the verified user.
5. The answer: the caller's own credential in user scope, else the shared one.

Every answer is JSON and ``Cache-Control: no-store``; a failure is a JSON 500, logged once. For the
shipped nginx site's micro-cache, every answer also says whether it may be kept (``X-Accel-Expires``,
which nginx acts on and never passes to clients): ``1`` (one second) only for a GET whose answer is
the same for every caller of its origin (``shareable``), ``0`` (never) for all else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from app.access.addresses import rate_key
from app.access.gates import Gate, Refused
from app.core.service import IceService
from app.limits.rate_limit import RateLimit

log = logging.getLogger("ice_servers")

GET, LEGACY = "/api/ice-servers", "/api/turn-credentials"
METHODS = {GET: ("GET", "HEAD"), LEGACY: ("POST",)}
ALLOWED_REQUEST_HEADERS = ("authorization", "content-type")
PREFLIGHT_MAX_AGE = "600"
REASONS = {
    200: "OK",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    405: "METHOD NOT ALLOWED",
    429: "TOO MANY REQUESTS",
    500: "INTERNAL SERVER ERROR",
}
NO_STORE = ("Cache-Control", "no-store")
SHARED_FOR_A_SECOND, NEVER_SHARED = ("X-Accel-Expires", "1"), ("X-Accel-Expires", "0")


class Cors:
    """Which origins may read the answers cross-origin (CORS_ORIGINS): echoed, never "*", no credentials."""

    def __init__(self, origins: tuple[str, ...]):
        """Keep the origins, compared without case."""
        self._origins = {origin.lower() for origin in origins}

    def headers(self, origin: str | None) -> list[tuple[str, str]]:
        """Return the CORS headers of an answer to ``origin``: an allowed one may read Retry-After (a refusal's wait)."""
        if origin and origin.lower() in self._origins:
            return [("Access-Control-Allow-Origin", origin), ("Access-Control-Expose-Headers", "Retry-After"), ("Vary", "Origin")]
        return [("Vary", "Origin")]

    def preflight(self, environ, methods: tuple[str, ...]) -> list[tuple[str, str]]:
        """Return the headers of a preflight's answer: permissions for an allowed origin only."""
        origin = environ.get("HTTP_ORIGIN")
        headers = self.headers(origin)
        if len(headers) == 1 or environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD") not in methods:
            return headers
        asked = [name.strip().lower() for name in environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "").split(",") if name.strip()]
        allowed = [name for name in asked if name in ALLOWED_REQUEST_HEADERS]
        headers += [("Access-Control-Allow-Methods", ", ".join((*methods, "OPTIONS"))), ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE)]
        if allowed:
            headers.append(("Access-Control-Allow-Headers", ", ".join(allowed)))
        return headers


class CredentialEndpoint:
    """WSGI middleware answering the two credential routes; every other request goes on to ``wsgi_app``."""

    def __init__(
        self,
        wsgi_app,
        service: IceService,
        gate: Gate,
        rate_limit: RateLimit | None = None,
        cors: Cors | None = None,
        per_user: bool = False,
        count_users: bool = False,
        refused: Callable[[int], None] = lambda status: None,
        shareable: Callable[[dict], bool] | None = None,
    ):
        """Wire the answer's parts; ``per_user``: answer each user their own credential; ``count_users``: limit per user too (jwt).

        ``shareable(environ)``: whether a 200 to this GET is the same for every caller with its Origin (None: never).
        """
        self.wsgi_app = wsgi_app
        self.service = service
        self.gate = gate
        self.rate_limit = rate_limit
        self.cors = cors
        self.per_user = per_user
        self.count_users = count_users
        self.refused = refused  # a recorder's hook: how many refusals of each status
        self.shareable = None if per_user else shareable  # a user's own credential is never shared

    def __call__(self, environ, start_response):
        """Answer a credential route; pass everything else on."""
        path = environ.get("PATH_INFO")
        methods = METHODS.get(path)
        if methods is None:
            return self.wsgi_app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "")
        cors = self.cors.headers(environ.get("HTTP_ORIGIN")) if self.cors else []
        if method == "OPTIONS":
            headers = self.cors.preflight(environ, methods) if self.cors else []
            return _send(start_response, 200, b"", [*headers, ("Allow", ", ".join((*methods, "OPTIONS"))), NO_STORE, NEVER_SHARED])
        if method not in methods:
            body = _error(405, "Method Not Allowed")
            return _send(start_response, 405, body, [*cors, ("Allow", ", ".join((*methods, "OPTIONS"))), NEVER_SHARED])
        try:
            status, body, headers = self._answer(environ, legacy=path == LEGACY)
        except Exception:
            log.exception("Unhandled error on %s %s", method, path)
            status, body, headers = 500, _error(500, "Internal Server Error"), []
        if status != 200:
            self.refused(status)
        shared = status == 200 and path == GET and self.shareable is not None and self.shareable(environ)
        marked = SHARED_FOR_A_SECOND if shared else NEVER_SHARED
        return _send(start_response, status, body, [*cors, *headers, marked], head=method == "HEAD")

    def _answer(self, environ, legacy: bool) -> tuple[int, bytes, list[tuple[str, str]]]:
        """Count, admit, count the user, answer: (status, body, headers besides CORS and the standard ones)."""
        limit = self.rate_limit
        if limit is not None and (refusal := limit.hit(rate_key(environ.get("REMOTE_ADDR")))) is not None:
            return 429, refusal.body, list(refusal.headers.items())
        try:
            user = self.gate(environ)
        except Refused as refused:
            return refused.status, refused.body, list(refused.headers.items())
        if limit is not None and self.count_users and (refusal := limit.hit(f"user:{user}")) is not None:
            return 429, refusal.body, list(refusal.headers.items())
        answer = self.service.answer(user) if self.per_user else self.service.answer()
        return 200, answer.legacy_json if legacy else answer.json, []


def _error(status: int, message: str) -> bytes:
    """Encode a JSON error."""
    return json.dumps({"error": message, "status": status}).encode()


def _send(start_response, status: int, body: bytes, headers: list[tuple[str, str]], head: bool = False) -> list[bytes]:
    """Start a JSON response that no cache may store (a HEAD's: the headers of the body it does not send)."""
    names = {name.lower() for name, _ in headers}
    standard = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), NO_STORE]
    start_response(f"{status} {REASONS[status]}", [*headers, *(pair for pair in standard if pair[0].lower() not in names)])
    return [b"" if head else body]
