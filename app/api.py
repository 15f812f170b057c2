"""The blueprint: thin views over IceService, and JSON for every error."""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, abort, current_app, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError

from app import metrics
from app.service import Answer

bp = Blueprint("api", __name__)
log = logging.getLogger("ice_servers")


@bp.get("/api/ice-servers")
def ice_servers():
    """Return ICE servers with a TURN credential (or the fallback) for RTCPeerConnection."""
    answer = _service().answer()
    return _json(answer.body(), answer)


@bp.post("/api/turn-credentials")
def turn_credentials():
    """Return the same credential in the first guide's single-object form."""
    answer = _service().answer()
    return _json(answer.legacy_body(), answer)


@bp.get("/healthz")
def healthz():
    """Say the process runs; touch nothing."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Say whether the shared cache answers and a TURN credential is held or can be had."""
    checks = _service().readiness()
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
    response = current_app.make_response(render_template("demo.html"))
    response.headers["Content-Security-Policy"] = "default-src 'self'; style-src 'self' 'unsafe-inline'"
    response.headers["Cache-Control"] = "no-store"
    return response


def _service():
    """Return the app's IceService."""
    return current_app.extensions["ice_service"]


def _json(body: dict, answer: Answer):
    """Wrap a body in a JSON response with the answer's Cache-Control."""
    response = current_app.json.response(body)
    response.headers["Cache-Control"] = answer.cache_control
    return response


def refuse_large_bodies():
    """Answer 413 from the Content-Length alone, before any of the body is read."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        abort(413, description=f"request body larger than {limit // 1024} KiB")


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


def init_app(app: Flask) -> None:
    """Register the blueprint, the body limit and the JSON error handlers."""
    app.register_blueprint(bp)
    app.before_request(refuse_large_bodies)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
