"""A Cloudflare Realtime TURN stand-in on loopback that follows the documented contract.

``POST /v1/turn/keys/{id}/credentials/generate-ice-servers`` with ``Authorization: Bearer
{token}`` and ``{"ttl": n}`` answers 201 with ``iceServers`` (port-53 URLs included, as the real
API does), or whatever failure the test sets in ``mode``. Every call is counted.

Used in-process (``with CloudflareStub() as stub``) or as a process for benchmarks
(``python -m tests.cloudflare_stub --port 9000``), controlled then over HTTP:
``POST /__stub__/config`` with ``{"mode": ..., "delay": ...}`` and ``GET /__stub__/calls``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import itertools
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

KEY_ID = "test-key-id"
API_TOKEN = "test-api-token-not-a-secret"
MODES = ("ok", "error500", "unauthorized", "garbage", "missing-credential", "hang", "rate-limited")
_GENERATE = re.compile(r"^/v1/turn/keys/([^/]+)/credentials/generate-ice-servers$")
_REVOKE = re.compile(r"^/v1/turn/keys/([^/]+)/credentials/([^/]+)/revoke$")


class CloudflareStub:
    """The stand-in server; set ``mode``, ``delay`` and ``retry_after``; read ``calls``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        """Bind now (port 0 picks a free one); serving starts with ``start``."""
        self.mode = "ok"
        self.delay = 0.0  # seconds before each answer
        self.retry_after = 30  # seconds, with mode rate-limited
        # To stand in front of a real TURN server (coturn with use-auth-secret): its URLs (port-53
        # twins are added, as Cloudflare's answer has them) and the secret credentials are signed with.
        self.turn_urls: list[str] | None = None
        self.signing_secret: str | None = None
        self.calls: list[dict] = []  # one entry per generate request: time, ttl, status, customIdentifier, username
        self.revoked: list[str] = []  # usernames revoked, in order
        self._serial = itertools.count(1)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.server = _QuietServer((host, port), self._handler())
        self.server.daemon_threads = True
        self.base_url = f"http://{host}:{self.server.server_port}/v1"

    def start(self) -> CloudflareStub:
        """Serve in a daemon thread."""
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and release hanging requests."""
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> CloudflareStub:
        """Start serving."""
        return self.start()

    def __exit__(self, *exc_info) -> None:
        """Stop serving."""
        self.stop()

    @property
    def call_count(self) -> int:
        """Return how many generate requests arrived."""
        with self._lock:
            return len(self.calls)

    def configure(self, **settings) -> None:
        """Set mode, delay or retry_after."""
        for name, value in settings.items():
            if name not in ("mode", "delay", "retry_after") or (name == "mode" and value not in MODES):
                raise ValueError(f"unknown stub setting {name}={value!r}")
            setattr(self, name, value)

    def generate(self, key_id: str, authorization: str | None, body: bytes) -> tuple[int, dict, bytes]:
        """Count one generate request on arrival, then answer it: status, headers, body."""
        call = {"time": time.time(), "ttl": None, "status": None, "customIdentifier": None, "username": None}
        with self._lock:
            self.calls.append(call)
        try:
            request = json.loads(body)
            call["ttl"] = int(request["ttl"])
            call["customIdentifier"] = request.get("customIdentifier")
            if not isinstance(call["customIdentifier"], str | None):
                raise TypeError("customIdentifier must be a string")
        except (ValueError, KeyError, TypeError):
            status, headers, payload = _envelope(400, "Invalid request body")
        else:
            if key_id != KEY_ID or authorization != f"Bearer {API_TOKEN}":
                status, headers, payload = _envelope(401, "Authentication error")
            else:
                status, headers, payload = self._answer(call["ttl"])
                if status == 201:
                    call["username"] = next((e.get("username") for e in json.loads(payload)["iceServers"] if "username" in e), None)
        call["status"] = status
        return status, headers, payload

    def revoke(self, key_id: str, username: str, authorization: str | None) -> tuple[int, dict, bytes]:
        """Revoke a credential: 204, as Cloudflare answers."""
        if key_id != KEY_ID or authorization != f"Bearer {API_TOKEN}":
            return _envelope(401, "Authentication error")
        with self._lock:
            self.revoked.append(username)
        return 204, {}, b""

    def _answer(self, ttl: int) -> tuple[int, dict, bytes]:
        """Answer as ``mode`` says, after ``delay``."""
        if self.mode == "hang":
            self._stopping.wait(60)
            return _envelope(504, "stub stopped")
        if self.delay:
            time.sleep(self.delay)
        if self.mode == "error500":
            return _envelope(500, "Internal server error")
        if self.mode == "unauthorized":
            return _envelope(401, "Authentication error")
        if self.mode == "rate-limited":
            status, headers, payload = _envelope(429, "Too many requests")
            return status, {**headers, "Retry-After": str(self.retry_after)}, payload
        if self.mode == "garbage":
            return 201, {"Content-Type": "text/html"}, b"<html><body>Service temporarily unavailable</body></html>"
        serial = next(self._serial)
        turn = {"urls": TURN_URLS, "username": f"stub-user-{serial}", "credential": f"stub-password-{serial}"}
        stun = {"urls": STUN_URLS}
        if self.turn_urls and self.signing_secret:
            turn = self._signed_for_turn_server(ttl)
            host_port = re.match(r"^turns?:([^?]+)", self.turn_urls[0]).group(1)
            stun = {"urls": [f"stun:{host_port}", "stun:" + re.sub(r":\d+$", ":53", host_port)]}
        if self.mode == "missing-credential":
            del turn["credential"]
        payload = {"iceServers": [stun, turn]}
        return 201, {"Content-Type": "application/json"}, json.dumps(payload).encode()

    def _signed_for_turn_server(self, ttl: int) -> dict:
        """Mint a TURN REST credential (HMAC-SHA1 over "expiry:user") for the configured TURN server."""
        username = f"{int(time.time()) + ttl}:stub-user-{next(self._serial)}"
        password = base64.b64encode(hmac.new(self.signing_secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
        urls = [twin for url in self.turn_urls for twin in (url, re.sub(r":\d+(\?|$)", r":53\1", url, count=1))]
        return {"urls": urls, "username": username, "credential": password}

    def _handler(self):
        """Build the request handler class bound to this stub."""
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/__stub__/config":
                    stub.configure(**json.loads(body))
                    return self._send(204, {}, b"")
                revoke = _REVOKE.match(self.path)
                if revoke:
                    return self._send(*stub.revoke(revoke.group(1), unquote(revoke.group(2)), self.headers.get("Authorization")))
                match = _GENERATE.match(self.path)
                if not match:
                    return self._send(*_envelope(404, "Not found"))
                self._send(*stub.generate(match.group(1), self.headers.get("Authorization"), body))

            def do_GET(self):  # noqa: N802
                if self.path == "/__stub__/calls":
                    with stub._lock:
                        payload = json.dumps({"count": len(stub.calls), "calls": stub.calls}).encode()
                    return self._send(200, {"Content-Type": "application/json"}, payload)
                self._send(*_envelope(404, "Not found"))

            def _send(self, status, headers, payload):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): what a real server sees too

            def log_message(self, *args):
                """Stay quiet."""

        return Handler


# What Cloudflare answers: eight URLs, port 53 included.
STUN_URLS = ["stun:stun.cloudflare.com:3478", "stun:stun.cloudflare.com:53"]
TURN_URLS = [
    "turn:turn.cloudflare.com:3478?transport=udp",
    "turn:turn.cloudflare.com:53?transport=udp",
    "turn:turn.cloudflare.com:3478?transport=tcp",
    "turn:turn.cloudflare.com:80?transport=tcp",
    "turns:turn.cloudflare.com:5349?transport=tcp",
    "turns:turn.cloudflare.com:443?transport=tcp",
]


class _QuietServer(ThreadingHTTPServer):
    """A server that says nothing when a client drops its connection (a peer process stopped mid-keep-alive)."""

    def handle_error(self, request, client_address) -> None:
        """Ignore dropped connections; report anything else as usual."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _envelope(status: int, message: str) -> tuple[int, dict, bytes]:
    """Build Cloudflare's error envelope."""
    payload = {"success": False, "errors": [{"code": status * 100, "message": message}], "messages": [], "result": None}
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


def main() -> None:
    """Run the stand-in as a process until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    stub = CloudflareStub(port=args.port)
    stub.delay = args.delay
    print(f"Cloudflare stand-in at {stub.base_url}", flush=True)
    try:
        stub.server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
