"""The blueprint: thin views over IceService, and JSON for every error."""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Flask, Response, abort, current_app, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError

from app import metrics
from app.service import IceService

log = logging.getLogger("ice_servers")
DEMO_CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'"


def create_blueprint(service: IceService) -> Blueprint:
    """Build the blueprint around ``service``: the views hold it directly, with no lookup per request."""
    bp = Blueprint("api", __name__)

    @bp.get("/api/ice-servers")
    def ice_servers():
        """Return ICE servers with a TURN credential (or the fallback) for RTCPeerConnection."""
        answer = service.answer()
        return Response(answer.json, content_type="application/json", headers=answer.headers)

    @bp.post("/api/turn-credentials")
    def turn_credentials():
        """Return the same credential in the first guide's single-object form."""
        answer = service.answer()
        return Response(answer.legacy_json, content_type="application/json", headers=answer.headers)

    @bp.get("/healthz")
    def healthz():
        """Say the process runs; touch nothing."""
        return {"status": "ok"}

    @bp.get("/readyz")
    def readyz():
        """Say whether the shared cache answers and a TURN credential is held or can be had."""
        checks = service.readiness()
        failing = [name for name, ok in checks.items() if not ok]
        body = {"status": 503 if failing else 200, "checks": {name: "ok" if ok else "failing" for name, ok in checks.items()}}
        if failing:
            body["error"] = f"not ready: {', '.join(failing)}"
        response = current_app.json.response(body)
        response.status_code = body["status"]
        response.headers["Cache-Control"] = "no-store"
        return response

    @bp.get("/metrics")
    def prometheus_metrics():
        """Return Prometheus text summed over all workers."""
        return metrics.render(), 200, {"Content-Type": metrics.CONTENT_TYPE, "Cache-Control": "no-store"}

    @bp.get("/demo")
    def demo():
        """Show, in a browser, whether TURN works from here (only with ICE_DEMO=1)."""
        if not current_app.config["ICE_DEMO"]:
            abort(404)
        return render_template("demo.html"), 200, {"Content-Security-Policy": DEMO_CSP, "Cache-Control": "no-store"}

    return bp


class BodyLimit:
    """WSGI middleware: answer 413 from the Content-Length alone, before anyone reads the body.

    Bodies without a Content-Length (chunked) are cut by Flask's MAX_CONTENT_LENGTH when read.
    """

    def __init__(self, wsgi_app, limit: int):
        """Wrap ``wsgi_app``."""
        self.wsgi_app = wsgi_app
        self.limit = limit
        self.refusal = json.dumps({"error": f"request body larger than {limit // 1024} KiB", "status": 413}).encode()

    def __call__(self, environ, start_response):
        """Refuse a declared body over the limit; pass everything else on."""
        length = environ.get("CONTENT_LENGTH")
        if length and length.isdigit() and int(length) > self.limit:
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(self.refusal))), ("Connection", "close")]
            start_response("413 Request Entity Too Large", headers)
            return [self.refusal]
        return self.wsgi_app(environ, start_response)


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


def init_app(app: Flask, service: IceService) -> None:
    """Register the blueprint, the body limit and the JSON error handlers."""
    app.register_blueprint(create_blueprint(service))
    app.wsgi_app = BodyLimit(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"])
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
