"""A stand-in for Cloudflare's GraphQL Analytics API on loopback: TURN egress of one account, per query.

It checks the bearer token, answers only a query that names ``callsTurnUsageAdaptiveGroups`` and
``sum { egressBytes }`` for the right account (inline values or variables), records every query
with its account, key id and ``date_geq``, and answers ``egress`` bytes split over two groups, or
the failure set in ``mode``: graphql-error (HTTP 200 with ``errors``), error500, garbage, hang.

As strict as the API about the dataset: a filter field, argument, dimension or metric that the TURN
analytics page (developers.cloudflare.com/realtime/turn/analytics) does not document is refused as
the API refuses an unknown field, a 400 with a GraphQL error naming it. Documented: the metrics
egressBytes, ingressBytes and concurrentConnections under sum and avg; the dimensions datetime,
datetimeMinute, datetimeFiveMinutes, datetimeFifteenMinutes, datetimeHour, date, datacenterCity,
datacenterCountry, datacenterRegion, keyId, customIdentifier and username; filters on the time
dimensions (with _gt, _geq, _lt, _leq), the key id, the username and the custom identifier, as the
page's examples (date_geq/date_leq now, datetimeMinute_gt/_lt before); and limit and orderBy.
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

DATASET = "callsTurnUsageAdaptiveGroups"
METRICS = {"egressBytes", "ingressBytes", "concurrentConnections"}
TIME_DIMENSIONS = {"datetime", "datetimeMinute", "datetimeFiveMinutes", "datetimeFifteenMinutes", "datetimeHour", "date"}
DIMENSIONS = TIME_DIMENSIONS | {"datacenterCity", "datacenterCountry", "datacenterRegion", "keyId", "customIdentifier", "username"}
FILTERS = {f"{name}{op}" for name in TIME_DIMENSIONS for op in ("", "_gt", "_geq", "_lt", "_leq")} | {
    "keyId",
    "username",
    "customIdentifier",
}
ARGUMENTS = {"filter", "limit", "orderBy"}


def _block(text: str, start: int) -> tuple[str, int]:
    """Return the text inside the brackets that open at ``start`` ("{" or "("), and the index after them."""
    close = {"{": "}", "(": ")"}[text[start]]
    depth, index = 0, start
    while index < len(text):
        if text[index] == text[start]:
            depth += 1
        elif text[index] == close:
            depth -= 1
            if depth == 0:
                return text[start + 1 : index], index + 1
        index += 1
    raise ValueError("unbalanced brackets")


def _selection(text: str) -> dict[str, str | None]:
    """Return the fields of a selection set (an alias's field, not the alias), each with its selection's text (None: a leaf)."""
    fields, index = {}, 0
    while index < len(text):
        match = re.compile(r"\s*(\w+)\s*(?::\s*(\w+)\s*)?").match(text, index)
        if not match:
            index += 1
            continue
        name, index = match.group(2) or match.group(1), match.end()
        if name == "__typename":
            continue
        if index < len(text) and text[index] == "(":
            _, index = _block(text, index)
            index = re.compile(r"\s*").match(text, index).end()
        if index < len(text) and text[index] == "{":
            inner, index = _block(text, index)
            fields[name] = inner
        else:
            fields[name] = None
    return fields


def unknown_field(query: str) -> str | None:
    """Return the first name in the dataset's arguments, filter or selection the documentation does not have, or None."""
    query = re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)  # string values hold colons and braces of their own
    query = re.sub(r"#[^\n]*", "", query)  # comments
    field = re.search(rf"(?<![\w$]){DATASET}(?=\s*[({{])", query)  # the field itself, not an operation's name
    if field is None:
        return None
    index = re.compile(r"\s*").match(query, field.end()).end()
    if index < len(query) and query[index] == "(":
        arguments, index = _block(query, index)
        for name in re.findall(r"(\w+)\s*:", re.sub(r"\{[^{}]*\}", "", arguments)):
            if name not in ARGUMENTS:
                return name
        filter_at = re.search(r"\bfilter\s*:\s*\{", arguments)
        if filter_at:
            inner, _ = _block(arguments, filter_at.end() - 1)
            for name in re.findall(r"(\w+)\s*:", inner):
                if name not in FILTERS:
                    return name
        index = re.compile(r"\s*").match(query, index).end()
    if index >= len(query) or query[index] != "{":
        return None
    selection, _ = _block(query, index)
    for group, inner in _selection(selection).items():
        allowed = {"sum": METRICS, "avg": METRICS, "dimensions": DIMENSIONS}.get(group)
        if allowed is None or inner is None:
            return group
        for name, leaf in _selection(inner).items():
            if name not in allowed or leaf is not None:  # a field the page lists, and a leaf: nothing selected under it
                return name
    return None


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
        unknown = unknown_field(query)
        if unknown is not None:
            error = {
                "message": f'unknown field "{unknown}"',
                "path": ["viewer", "accounts", DATASET],
                "extensions": {"code": "BAD_REQUEST"},
            }
            return 400, json.dumps({"data": None, "errors": [error]}).encode()
        if DATASET not in query or not re.search(r"sum\s*\{\s*egressBytes\s*\}", query):
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
