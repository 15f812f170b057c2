"""The blueprint: thin views over IceService (the credential routes, health, readiness, metrics, the demo)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response, abort, current_app, g, render_template, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import HTTPException, Unauthorized

from app.access.addresses import address_allowed, rate_key
from app.access.identity import UserIds
from app.access.origins import origin_allowed
from app.access.signed_tokens import token_valid
from app.config import Settings
from app.core.service import IceService
from app.limits.rate_limit import RateLimit
from app.web import metrics
from app.web.errors import http_error, unexpected_error
from app.web.middleware import NO_STORE, DirectAnswer, RequestLimits

if TYPE_CHECKING:  # only jwt mode builds one (PyJWT loads cryptography: no cost for the other modes)
    from app.access.jwt_tokens import JwtVerifier

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


def init_app(app: Flask, service: IceService, settings: Settings, rate_limit: RateLimit | None, identify: Identify | None = None) -> None:
    """Register the blueprint, the request limits and the JSON error handlers."""
    app.register_blueprint(create_blueprint(service, settings, rate_limit, identify))
    if settings.access_mode == "open" and not settings.cors_origins:
        app.wsgi_app = DirectAnswer(app.wsgi_app, service, rate_limit)
    app.wsgi_app = RequestLimits(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"])
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
