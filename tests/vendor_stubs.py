"""Stand-ins for Twilio's Network Traversal Service and Metered's TURN REST API on loopback, as their docs publish them.

Each checks the credentials its API takes, refuses what the contract lacks, counts calls and fails
on demand (``mode``: ok, unauthorized, error500, html, no-turn, hang).

- Twilio (twilio.com/docs/stun-turn/api): ``POST /2010-04-01/Accounts/{AccountSid}/Tokens.json``,
  HTTP Basic (the account SID and auth token, or an API key SID and secret), a form with an
  optional ``Ttl`` (1..86400): 201 ``{username, password, ttl: "<seconds>", ice_servers, account_sid,
  date_created, date_updated}``, each ice_servers entry with the deprecated ``url`` beside ``urls``;
  errors ``{code, message, more_info, status}`` (401 is code 20003). No revocation.
- Metered (metered.ca/docs/turn-rest-api): ``POST /api/v1/turn/credential?secretKey=`` with JSON
  ``{expiryInSeconds, label}`` (a positive integer, else 400), 200 ``{username, password,
  expiryInSeconds, label, apiKey}``; ``GET /api/v1/turn/credentials?apiKey=`` a JSON array of
  RTCIceServer; ``DELETE /api/v1/turn/credential?secretKey=`` with ``{"username"}`` (400 when
  unknown); ``DELETE /api/v2/turn/credential/by_label?secretKey=&label=``; errors ``{message}``.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TWILIO_ACCOUNT_SID = "ACtest" + "0" * 28
TWILIO_AUTH_TOKEN = "test-twilio-auth-token-not-a-secret"
TWILIO_API_KEY_SID = "SKtest" + "0" * 28
TWILIO_API_KEY_SECRET = "test-twilio-key-secret-not-a-secret"
METERED_APP = "ice-test"
METERED_SECRET_KEY = "test-metered-secret-key-not-a-secret"
METERED_API_KEY = "test-metered-app-api-key-not-a-secret"
MODES = ("ok", "unauthorized", "error500", "html", "no-turn", "hang")


class _Stub:
    """What both stand-ins share: a threaded server, a mode, a call log, a way to stop hanging requests."""

    def __init__(self):
        self.mode = "ok"
        self.calls: list[dict] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._serial = itertools.count(1)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info):
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()

    @property
    def call_count(self) -> int:
        with self._lock:
            return len(self.calls)

    def _log(self, **call) -> dict:
        call["time"] = time.time()
        with self._lock:
            self.calls.append(call)
        return call

    def _failure(self) -> tuple[int, dict] | None:
        """Answer as ``mode`` says, or None to go on."""
        if self.mode == "hang":
            self._stopping.wait(60)
            return 504, {"message": "stub stopped"}
        if self.mode == "error500":
            return 500, {"message": "internal error"}
        if self.mode == "html":
            return 200, "<html>maintenance</html>"
        return None

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, payload = stub.answer(self.command, self.path, self.headers, body)
                raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if isinstance(payload, str) else "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                try:
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_DELETE = _serve  # noqa: N815 (http.server's naming)

            def log_message(self, *args):
                """Stay quiet."""

        return Handler


class TwilioStub(_Stub):
    """Twilio's Tokens resource; set ``mode``; read ``calls`` (ttl asked, user of the Basic auth, status)."""

    def answer(self, method: str, path: str, headers, body: bytes):
        call = self._log(method=method, path=path, ttl=None, user=None, status=None)
        call["status"], payload = self._answer(call, method, path, headers.get("Authorization"), body)
        return call["status"], payload

    def _answer(self, call, method, path, authorization, body):
        if method != "POST" or path != f"/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Tokens.json":
            return 404, {"code": 20404, "message": "The requested resource was not found", "more_info": "", "status": 404}
        user, secret = _basic(authorization)
        call["user"] = user
        if self.mode == "unauthorized" or (user, secret) not in {
            (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN),
            (TWILIO_API_KEY_SID, TWILIO_API_KEY_SECRET),
        }:
            return 401, {"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}
        form = parse_qs(body.decode("ascii", "replace"))
        ttl = form.get("Ttl", ["86400"])[0]
        if set(form) - {"Ttl"} or not ttl.isdigit() or not 1 <= int(ttl) <= 86400:
            return 400, {"code": 21602, "message": "Invalid Ttl", "more_info": "", "status": 400}
        call["ttl"] = int(ttl)
        failure = self._failure()
        if failure:
            return failure
        serial = next(self._serial)
        username, password = f"twilio-user-{serial}", f"twilio-password-{serial}"
        stun = "stun:global.stun.twilio.com:3478?transport=udp"
        servers = [{"url": stun, "urls": stun}]
        if self.mode != "no-turn":
            for url in (  # Twilio's published example answer: UDP and TCP on 3478, TCP on 443
                "turn:global.turn.twilio.com:3478?transport=udp",
                "turn:global.turn.twilio.com:3478?transport=tcp",
                "turn:global.turn.twilio.com:443?transport=tcp",
            ):
                servers.append({"url": url, "urls": url, "username": username, "credential": password})
        now = formatdate(usegmt=True)
        return 201, {
            "username": username,
            "password": password,
            "ttl": ttl,
            "ice_servers": servers,
            "account_sid": TWILIO_ACCOUNT_SID,
            "date_created": now,
            "date_updated": now,
        }


class MeteredStub(_Stub):
    """Metered's TURN REST API of one app; set ``mode``; read ``calls`` and ``credentials`` (username -> label, apiKey)."""

    def __init__(self):
        super().__init__()
        self.credentials: dict[str, dict] = {}
        self.revoked: list[str] = []

    def answer(self, method: str, path: str, headers, body: bytes):
        url = urlsplit(path)
        query = {name: values[0] for name, values in parse_qs(url.query).items()}
        call = self._log(method=method, path=url.path, status=None, label=None)
        call["status"], payload = self._answer(call, method, url.path, query, body)
        return call["status"], payload

    def _answer(self, call, method, path, query, body):
        if (method, path) == ("POST", "/api/v1/turn/credential"):
            if self.mode == "unauthorized" or query.get("secretKey") != METERED_SECRET_KEY:
                return 401, {"message": "Invalid secret key"}
            try:
                request = json.loads(body or b"{}")
                if not isinstance(request, dict) or set(request) - {"expiryInSeconds", "label"}:
                    return 400, {"message": "unknown field: the body takes expiryInSeconds and label"}
                if request.get("label") is not None and not isinstance(request["label"], str):
                    return 400, {"message": "label must be a string"}
                expiry = request.get("expiryInSeconds")
                if expiry is not None and (isinstance(expiry, bool) or not isinstance(expiry, int) or expiry <= 0):
                    raise ValueError
            except ValueError:
                return 400, {"message": "please enter a positive integer value for expiryInSeconds"}
            failure = self._failure()
            if failure:
                return failure
            serial = next(self._serial)
            created = {
                "username": f"metered-user-{serial}",
                "password": f"metered-password-{serial}",
                "expiryInSeconds": expiry,
                "label": request.get("label"),
                "apiKey": f"test-metered-credential-api-key-{serial}",
            }
            call["label"] = created["label"]
            self.credentials[created["username"]] = created
            return 200, created
        if (method, path) == ("GET", "/api/v1/turn/credentials"):
            if self.mode == "unauthorized":
                return 401, {"message": "Invalid API Key"}
            failure = self._failure()
            if failure:
                return failure
            api_key = query.get("apiKey")
            if api_key == METERED_API_KEY:
                username, password = "metered-standing-user", "metered-standing-password"
            else:
                found = next((c for c in self.credentials.values() if c["apiKey"] == api_key), None)
                if found is None:
                    return 401, {"message": "Invalid API Key"}
                username, password = found["username"], found["password"]
            servers = [{"urls": "stun:stun.relay.metered.ca:80"}]
            if self.mode != "no-turn":
                for url in ("turn:global.relay.metered.ca:80", "turn:global.relay.metered.ca:443?transport=tcp"):
                    servers.append({"urls": url, "username": username, "credential": password})
            return 200, servers
        if (method, path) == ("DELETE", "/api/v1/turn/credential"):
            if query.get("secretKey") != METERED_SECRET_KEY:
                return 401, {"message": "Invalid secret key"}
            username = (json.loads(body or b"{}") or {}).get("username")
            if username not in self.credentials:
                return 400, {"message": "credential not found"}
            self.revoked.append(self.credentials.pop(username)["username"])
            return 200, {"success": True, "message": "Credential deleted successfully"}
        if (method, path) == ("DELETE", "/api/v2/turn/credential/by_label"):
            if query.get("secretKey") != METERED_SECRET_KEY:
                return 401, {"message": "Invalid secret key"}
            gone = [name for name, c in self.credentials.items() if c["label"] == query.get("label")]
            for name in gone:
                self.revoked.append(self.credentials.pop(name)["username"])
            return 200, {"success": True, "message": f"{len(gone)} credentials deleted"}
        return 404, {"message": "Not found"}


def _basic(authorization: str | None) -> tuple[str | None, str | None]:
    """Decode HTTP Basic credentials, or (None, None)."""
    if not authorization or not authorization.startswith("Basic "):
        return None, None
    try:
        user, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
    except ValueError:
        return None, None
    return user, secret
