"""The blueprint: thin views over IceService for what is not a credential route (health, readiness, metrics, the demo)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, abort, current_app, render_template, request
from werkzeug.exceptions import HTTPException

from app.access.addresses import address_allowed
from app.config import Settings
from app.core.service import IceService
from app.web import metrics
from app.web.errors import http_error, unexpected_error
from app.web.middleware import NO_STORE

DEMO_CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'"


def create_blueprint(service: IceService, settings: Settings) -> Blueprint:
    """Build the blueprint around ``service``: health, readiness, metrics and the demo (the credential routes are endpoint.py)."""
    bp = Blueprint("api", __name__)

    release = release_name()

    @bp.get("/healthz")
    def healthz():
        """Say the process runs, and to ICE_METRICS_ALLOW's addresses which release it runs (deploy.sh checks it); touch nothing."""
        body = {"status": "ok"}
        if release and address_allowed(request.remote_addr, settings.metrics_allow):
            body["release"] = release
        return body

    @bp.get("/readyz")
    def readyz():
        """Say whether this instance can hand out TURN (200) or not (503), naming every check and each one failing.

        Ready means TURN can be handed out: a valid credential held or to be had, or static
        TURN_SERVERS. A failing Redis (or a failing provider beside TURN_SERVERS) leaves the instance
        ready and is named in the body as degraded: Redis fails for every instance at once. Anyone gets the status
        and the checks (a load balancer's probe); only the addresses in ICE_METRICS_ALLOW also get
        the topology, which names Redis's hosts and ports.
        """
        ready, checks, topology = service.readiness()
        failing = [name for name, ok in checks.items() if not ok]
        status = 200 if ready else 503
        body = {"status": status, "checks": {name: "ok" if ok else "failing" for name, ok in checks.items()}}
        if address_allowed(request.remote_addr, settings.metrics_allow):
            body["topology"] = topology
        if status != 200:
            body["error"] = f"not ready: {', '.join(failing)}"
        elif failing:
            body["degraded"] = failing
        response = current_app.json.response(body)
        response.status_code = status
        return response

    @bp.get("/metrics")
    def prometheus_metrics():
        """Return Prometheus text summed over all workers, to the addresses in ICE_METRICS_ALLOW only; serverless, how to count."""
        if settings.serverless:
            return metrics.SERVERLESS_NOTE, 200, {"Content-Type": metrics.CONTENT_TYPE}
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


def release_name() -> str | None:
    """Return the name of the release this code was loaded from (deploy.sh writes it in RELEASE), or None outside a release."""
    path = Path(__file__).resolve().parents[2] / "RELEASE"
    try:
        name = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if name and len(name) <= 100 and name.isprintable() else None


def init_app(app: Flask, service: IceService, settings: Settings) -> None:
    """Register the blueprint and the JSON error handlers."""
    app.register_blueprint(create_blueprint(service, settings))
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
