"""A stand-in for Cloudflare's GraphQL Analytics API on loopback: TURN egress of one account, per query.

It checks the bearer token, answers only a query that names ``callsTurnUsageAdaptiveGroups`` and
``sum { egressBytes }`` for the right account (inline values or variables), records every query
with its account, key id and ``date_geq``, and answers ``egress`` bytes split over two groups, or
the failure set in ``mode``: graphql-error (HTTP 200 with ``errors``), error500, garbage, hang.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACCOUNT_ID = "test-account-id"
ANALYTICS_TOKEN = "test-analytics-token-not-a-secret"
MODES = ("ok", "graphql-error", "error500", "garbage", "hang")


def _argument(query: str, variables: dict, name: str) -> str | None:
    """Return the value of ``name: "..."`` or ``name: $var`` in a query."""
    inline = re.search(rf'\b{name}\s*:\s*"([^"]*)"', query)
    if inline:
        return inline.group(1)
    variable = re.search(rf"\b{name}\s*:\s*\$(\w+)", query)
    return variables.get(variable.group(1)) if variable else None


class GraphqlStub:
    """The stand-in; set ``egress`` (bytes this month) and ``mode``; read ``queries``."""

    def __init__(self):
        """Bind a free loopback port; serving starts on ``with``."""
        self.egress = 0
        self.mode = "ok"
        self.queries: list[dict] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/client/v4/graphql"

    def __enter__(self) -> GraphqlStub:
        """Serve in a daemon thread."""
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        """Stop serving and release hanging requests."""
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    @property
    def count(self) -> int:
        """Return how many queries arrived."""
        with self._lock:
            return len(self.queries)

    def answer(self, authorization: str | None, body: bytes) -> tuple[int, bytes]:
        """Record one query, then answer it: status, body."""
        try:
            request = json.loads(body)
            query, variables = str(request["query"]), request.get("variables") or {}
        except (ValueError, KeyError, TypeError):
            return 400, b'{"data": null, "errors": [{"message": "bad request"}]}'
        record = {
            "time": time.time(),
            "account": _argument(query, variables, "accountTag"),
            "keyId": _argument(query, variables, "keyId"),
            "date_geq": _argument(query, variables, "date_geq"),
            "datetime_filter": "datetime" in query,
        }
        with self._lock:
            self.queries.append(record)
        if authorization != f"Bearer {ANALYTICS_TOKEN}":
            return 200, json.dumps({"data": None, "errors": [{"message": "not authorized for that account"}]}).encode()
        if self.mode == "hang":
            self._release.wait(30)
            return 504, b""
        if self.mode == "error500":
            return 500, b"internal error"
        if self.mode == "garbage":
            return 200, b"<html>maintenance</html>"
        if self.mode == "graphql-error":
            return 200, json.dumps({"data": None, "errors": [{"message": "query cost limit exceeded"}]}).encode()
        if "callsTurnUsageAdaptiveGroups" not in query or not re.search(r"sum\s*\{\s*egressBytes\s*\}", query):
            return 200, json.dumps({"data": None, "errors": [{"message": "unknown field"}]}).encode()
        if record["account"] != ACCOUNT_ID:
            return 200, json.dumps({"data": {"viewer": {"accounts": []}}, "errors": None}).encode()
        half = self.egress // 2
        groups = [{"sum": {"egressBytes": half}}, {"sum": {"egressBytes": self.egress - half}}] if self.egress else []
        payload = {"data": {"viewer": {"accounts": [{"callsTurnUsageAdaptiveGroups": groups}]}}, "errors": None}
        return 200, json.dumps(payload).encode()

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload = stub.answer(self.headers.get("Authorization"), body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                """Stay quiet."""

        return Handler
