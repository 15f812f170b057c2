"""The blueprint: thin views over IceService, and JSON for every error."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response, abort, current_app, g, render_template, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import HTTPException, InternalServerError, Unauthorized

from app import metrics
from app.access import address_allowed, origin_allowed, token_valid
from app.client_address import Network, client_address, parse_address, rate_key, trusted
from app.config import Settings
from app.identity import UserIds
from app.numbers import parse_digits
from app.rate_limit import RateLimit
from app.service import IceService

if TYPE_CHECKING:  # only jwt mode builds one (PyJWT loads cryptography: no cost for the other modes)
    from app.jwt_access import JwtVerifier

log = logging.getLogger("ice_servers")
# On every answer but the static files: a credential is a secret that changes, so no browser, proxy or
# CDN may store one (a stored answer hands a stale, revoked or another user's credential to fetch()).
NO_STORE = "no-store"
Identify = Callable[[], str | None]  # the opaque id of the verified caller, or None
DEMO_CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'"


def create_blueprint(service: IceService, settings: Settings, rate_limit: RateLimit | None, identify: Identify | None) -> Blueprint:
    """Build the blueprint around ``service``: the views hold it directly, with no lookup per request."""
    bp = Blueprint("api", __name__)
    admit = _gate(settings, identify)
    per_user = settings.credential_scope == "user"

    def respond(legacy: bool) -> Response:
        """Count the address, admit the caller, count a verified user, then send the answer (theirs in user scope).

        The address is counted before any token is looked at, so that a flood of bad tokens (or of
        unknown key ids) costs one cheap refusal each and never a verification or a JWKS fetch.
        """
        if rate_limit is not None and (refused := rate_limit.hit(rate_key(request.remote_addr))) is not None:
            return Response(refused[0], status=429, headers=refused[1])
        user = admit()
        if rate_limit is not None and identify is not None and (refused := rate_limit.hit(f"user:{user}")) is not None:
            return Response(refused[0], status=429, headers=refused[1])
        answer = service.answer(user) if per_user else service.answer()
        return Response(answer.legacy_json if legacy else answer.json, content_type="application/json", headers=answer.headers)

    @bp.get("/api/ice-servers")
    def ice_servers():
        """Return ICE servers with a TURN credential (or the fallback) for RTCPeerConnection."""
        return respond(legacy=False)

    @bp.post("/api/turn-credentials")
    def turn_credentials():
        """Return the same credential in the first guide's single-object form."""
        return respond(legacy=True)

    @bp.get("/healthz")
    def healthz():
        """Say the process runs; touch nothing."""
        return {"status": "ok"}

    @bp.get("/readyz")
    def readyz():
        """Say whether the shared cache answers and a TURN credential is held or can be had.

        Anyone gets the status and the names of the checks (a load balancer's health check); only the
        addresses in ICE_METRICS_ALLOW also get the topology, which names Redis's hosts and ports.
        """
        checks, topology = service.readiness()
        failing = [name for name, ok in checks.items() if not ok]
        body = {"status": 503 if failing else 200, "checks": {name: "ok" if ok else "failing" for name, ok in checks.items()}}
        if address_allowed(request.remote_addr, settings.metrics_allow):
            body["topology"] = topology
        if failing:
            body["error"] = f"not ready: {', '.join(failing)}"
        response = current_app.json.response(body)
        response.status_code = body["status"]
        return response

    @bp.get("/metrics")
    def prometheus_metrics():
        """Return Prometheus text summed over all workers, to the addresses in ICE_METRICS_ALLOW only."""
        if not address_allowed(request.remote_addr, settings.metrics_allow):
            abort(403, description="metrics are only for the addresses in ICE_METRICS_ALLOW")
        return metrics.render(), 200, {"Content-Type": metrics.CONTENT_TYPE}

    @bp.get("/demo")
    def demo():
        """Show, in a browser, whether TURN works from here (only with ICE_DEMO=1)."""
        if not current_app.config["ICE_DEMO"]:
            abort(404)
        return render_template("demo.html"), 200, {"Content-Security-Policy": DEMO_CSP}

    @bp.after_app_request
    def no_store(response: Response) -> Response:
        """Keep every answer but the static files themselves out of every cache (see NO_STORE)."""
        if request.endpoint != "static" or response.status_code >= 400:
            response.headers["Cache-Control"] = NO_STORE
        return response

    return bp


TOKEN_REQUIRED = "a valid access token is required"


def make_identify(verifier: JwtVerifier, user_ids: UserIds) -> Identify:
    """Return a function giving the opaque id of the request's verified user, or None; it verifies once per request.

    The rate limiter's key and the gate both ask, so the token is checked once and the subject
    never leaves this function: only its keyed hash does.
    """

    def identify() -> str | None:
        try:
            return g.ice_user
        except AttributeError:
            subject = verifier.subject(request.headers.get("Authorization"))
            g.ice_user = user_ids.opaque(subject) if subject is not None else None
            return g.ice_user

    return identify


def _gate(settings: Settings, identify: Identify | None):
    """Return the access check of ICE_ACCESS_MODE: it raises a 401 or 403, or returns the verified user (jwt mode)."""
    if identify is not None:

        def admit_user() -> str:
            # One answer for missing, malformed, expired, forged and unverifiable tokens alike.
            user = identify()
            if user is None:
                raise Unauthorized(description=TOKEN_REQUIRED, www_authenticate=WWWAuthenticate("bearer"))
            return user

        return admit_user
    if settings.access_mode == "origin":

        def admit_origin() -> None:
            if not origin_allowed(request.headers.get("Origin"), request.headers.get("Referer"), settings.cors_origins):
                abort(403, description="this origin may not ask for ICE servers")

        return admit_origin
    if settings.access_mode == "token":

        def admit_token() -> None:
            # One answer for missing, malformed, expired and forged tokens alike.
            if not token_valid(settings.access_secret, request.headers.get("Authorization"), time.time()):
                raise Unauthorized(description=TOKEN_REQUIRED, www_authenticate=WWWAuthenticate("bearer"))

        return admit_token
    return lambda: None


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

    def __init__(self, wsgi_app, max_body: int):
        """Wrap ``wsgi_app``."""
        self.wsgi_app = wsgi_app
        self.max_body = max_body

    def __call__(self, environ, start_response):
        """Refuse a request over the limits; pass everything else on."""
        length = environ.get("CONTENT_LENGTH")
        declared = parse_digits(length) if length else 0
        if declared is None:
            return _refuse(start_response, 400, "Content-Length is not a number")
        if declared > self.max_body:
            return _refuse(start_response, 413, f"request body larger than {self.max_body // 1024} KiB")
        query = environ.get("QUERY_STRING", "")
        if len(query) > self.MAX_QUERY:
            return _refuse(start_response, 414, f"query string longer than {self.MAX_QUERY} bytes")
        try:  # WSGI carries them as latin-1 text holding the raw bytes
            environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
            query.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return _refuse(start_response, 400, "request path or query string is not UTF-8")
        return self.wsgi_app(environ, start_response)


class DirectAnswer:
    """WSGI middleware: GET /api/ice-servers in the default access mode (open, no CORS), answered below Flask.

    The same rate limit, answer, headers and JSON 500 as the view, without Flask's request context,
    routing and response objects, which cost more than the rest of the request together (in
    process: 54 us through Flask against 41 us for a bare Flask view returning a constant). Every
    other request, and every request in another mode (whose gates and CORS headers live in Flask),
    goes to Flask.
    """

    PATH = "/api/ice-servers"

    def __init__(self, wsgi_app, service: IceService, rate_limit: RateLimit | None):
        """Wrap ``wsgi_app``."""
        self.wsgi_app = wsgi_app
        self.service = service
        self.rate_limit = rate_limit

    def __call__(self, environ, start_response):
        """Answer GET /api/ice-servers; pass everything else on."""
        if environ.get("PATH_INFO") != self.PATH or environ.get("REQUEST_METHOD") != "GET":
            return self.wsgi_app(environ, start_response)
        try:
            if self.rate_limit is not None and (refused := self.rate_limit.hit(rate_key(environ.get("REMOTE_ADDR")))) is not None:
                body, headers = refused
                start_response("429 TOO MANY REQUESTS", [*headers.items(), ("Content-Length", str(len(body)))])
                return [body]
            answer = self.service.answer()
            body = answer.json
        except Exception:
            log.exception("Unhandled error on GET %s", self.PATH)
            body = json.dumps({"error": InternalServerError().name, "status": 500}).encode()
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Cache-Control", NO_STORE)]
            start_response("500 INTERNAL SERVER ERROR", headers)
            return [body]
        start_response("200 OK", [*answer.headers.items(), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def _refuse(start_response, status: int, message: str) -> list[bytes]:
    """Answer a JSON error straight from WSGI."""
    body = json.dumps({"error": message, "status": status}).encode()
    reason = {400: "Bad Request", 413: "Request Entity Too Large", 414: "URI Too Long"}[status]
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", NO_STORE),
        ("Connection", "close"),
    ]
    start_response(f"{status} {reason}", headers)
    return [body]


def http_error(error: HTTPException):
    """Render any HTTP error as JSON, keeping its headers (Allow on 405, for example)."""
    message = error.description if error.description != type(error).description else error.name
    response = error.get_response()
    response.data = current_app.json.dumps({"error": message, "status": error.code})
    response.content_type = "application/json"
    return response


def unexpected_error(error: Exception):
    """Log an unexpected failure and answer a JSON 500 with no detail."""
    log.exception("Unhandled error on %s %s", request.method, request.path)
    return http_error(InternalServerError())


def init_app(app: Flask, service: IceService, settings: Settings, rate_limit: RateLimit | None, identify: Identify | None = None) -> None:
    """Register the blueprint, the request limits and the JSON error handlers."""
    app.register_blueprint(create_blueprint(service, settings, rate_limit, identify))
    if settings.access_mode == "open" and not settings.cors_origins:
        app.wsgi_app = DirectAnswer(app.wsgi_app, service, rate_limit)
    app.wsgi_app = RequestLimits(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"])
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
