"""Every error as JSON: one handler for HTTP errors, one for what nothing else caught."""

from __future__ import annotations

import logging

from flask import current_app, request
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger("ice_servers")


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
