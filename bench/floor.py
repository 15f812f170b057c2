"""The floor: the cheapest thing Flask can do with the same answer (same body, same headers).

The benchmark captures the app's own answer into FLOOR_BODY_FILE and runs this under the same
gunicorn.conf.py, so the two differ only in what the app does per request.
"""

import os

from flask import Flask, Response

app = Flask(__name__)
BODY = open(os.environ["FLOOR_BODY_FILE"], "rb").read()  # noqa: SIM115 (read once at import)
HEADERS = {"Cache-Control": os.environ.get("FLOOR_CACHE_CONTROL", "no-store")}


@app.get("/api/ice-servers")
def ice_servers():
    """Return the captured answer."""
    return Response(BODY, content_type="application/json", headers=HEADERS)


@app.get("/healthz")
def healthz():
    """Say the process runs."""
    return {"status": "ok"}
