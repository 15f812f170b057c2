"""Tokens and identity providers for the tests: HS256, RS256 and ES256 keys made at run time, a JWKS on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

HS_SECRET = "test-jwt-secret-0123456789-abcdefghij"  # 37 characters, obviously fake
AUDIENCE = "ice-servers-test"
ISSUER = "https://idp.example.test/"


class SigningKey:
    """A key pair of one algorithm with its kid; ``jwk`` is its public half for a JWKS."""

    def __init__(self, algorithm: str, kid: str):
        """Generate a fresh key pair."""
        self.algorithm, self.kid = algorithm, kid
        if algorithm == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk = {**jwk, "kid": kid, "use": "sig", "alg": algorithm}

    @property
    def public_pem(self) -> bytes:
        """Return the public key as PEM (what an algorithm-confusion attacker signs HS256 with)."""
        return self.private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def token(self, sub: str = "user-1", **claims) -> str:
        """Sign a token for ``sub`` living five minutes, of ISSUER for AUDIENCE, with ``claims`` added (None removes one)."""
        claims = {"iss": ISSUER, "aud": AUDIENCE, **claims}
        return jwt.encode(_claims(sub, claims), self.private, algorithm=self.algorithm, headers={"kid": self.kid})


def hs_token(sub: str = "user-1", secret: str = HS_SECRET, **claims) -> str:
    """Sign an HS256 token for ``sub`` living five minutes, with ``claims`` added (None removes one)."""
    return jwt.encode(_claims(sub, claims), secret, algorithm="HS256")


def raw_token(header: dict, payload: dict, signature: bytes | None = None, hmac_key: bytes | None = None) -> str:
    """Assemble a token by hand: forged algorithms PyJWT refuses to sign (none, HS256 with a public key)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature or b'')}"


def bearer(token: str) -> dict[str, str]:
    """Return the Authorization header carrying ``token``."""
    return {"Authorization": f"Bearer {token}"}


def _claims(sub: str | None, extra: dict) -> dict:
    """Build the claims: sub, iat and a five-minute exp, then ``extra`` (None values drop a claim)."""
    now = int(time.time())
    claims = {"sub": sub, "iat": now, "exp": now + 300, **extra}
    return {name: value for name, value in claims.items() if value is not None}


def _b64(data: bytes) -> str:
    """Encode base64url without padding, as JWTs do."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class JwksServer:
    """An identity provider's JWKS endpoint on loopback that counts its fetches, and can be stopped or made to hang."""

    def __init__(self, *keys: SigningKey):
        """Serve the public halves of ``keys``; bind a free port now."""
        self.keys = list(keys)
        self.fetches = 0
        self.hang = False
        self.delay = 0.0
        self.status = 200  # another status: a provider that fails fast
        self._release = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/.well-known/jwks.json"

    def __enter__(self) -> JwksServer:
        """Serve in a daemon thread."""
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        """Stop serving (if not stopped already) and release hanging requests."""
        self.stop()

    def stop(self) -> None:
        """Stop serving: later fetches are refused, as from a provider that is down."""
        self._release.set()
        if self.server.socket.fileno() != -1:
            self.server.shutdown()
            self.server.server_close()

    def _handler(self):
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (http.server's naming)
                with jwks._lock:
                    jwks.fetches += 1
                if jwks.hang:
                    jwks._release.wait(30)
                    return
                if jwks.delay:
                    time.sleep(jwks.delay)
                if jwks.status != 200:
                    self.send_response(jwks.status)
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    return
                payload = json.dumps({"keys": [key.jwk for key in jwks.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")  # so that a stopped server answers nothing more
                self.end_headers()
                self.wfile.write(payload)
                self.close_connection = True

            def log_message(self, *args):
                """Stay quiet."""

        return Handler
