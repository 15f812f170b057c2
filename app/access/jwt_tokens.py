"""JWT access: the verified subject of a bearer token from the app's identity provider, or None.

PyJWT verifies; this module decides what it is asked to verify. The algorithms are the
configured ones, never the token's: with a JWKS, the key the ``kid`` names must itself be of an
allowed algorithm, so an HS256 token signed with a public key, ``alg: none`` and a key of the
wrong kind are all refused. ``exp`` and ``sub`` are required; the audience and the issuer are
checked exactly when configured (PyJWT compares the issuer whole, and requires ``aud`` when an
audience is set; with ``no_audience``, the ICE_JWT_NO_AUDIENCE opt-out, a token carrying any ``aud``
is refused). Every failure is the same None, so the caller answers every refusal alike.
"""

from __future__ import annotations

import jwt

from app.access.jwks import JwksCache

LEEWAY = 30  # seconds of clock skew allowed on exp, nbf and iat
MAX_TOKEN_CHARS = 7168  # larger tokens are refused unread; headers up to 16 KiB reach the app to be told so
REQUIRED_CLAIMS = ("exp", "sub")


class JwtVerifier:
    """Check ``Authorization: Bearer <JWT>`` against an HMAC secret or a JWKS."""

    def __init__(
        self,
        algorithms: tuple[str, ...],
        secret: str | None = None,
        jwks: JwksCache | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        no_audience: bool = False,
    ):
        """Take exactly one key source: ``secret`` (HMAC) or ``jwks`` (public keys); ``no_audience``: refuse tokens with an aud."""
        if (secret is None) == (jwks is None):
            raise ValueError("JwtVerifier needs exactly one of secret and jwks")
        self._algorithms = list(algorithms)
        self._secret = secret
        self._jwks = jwks
        self._audience = audience
        self._issuer = issuer
        self._no_audience = no_audience
        self._options = {"require": list(REQUIRED_CLAIMS), "verify_aud": audience is not None}

    def __repr__(self) -> str:
        """Name the verifier, never the secret."""
        return f"JwtVerifier({self._algorithms!r}, jwks={self._jwks!r})"

    def subject(self, authorization: str | None) -> str | None:
        """Return the ``sub`` of a valid token in an Authorization header, or None."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        token = authorization[7:].strip()
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        try:
            key, algorithms = self._key(token)
            if key is None:
                return None
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY,
                options=self._options,
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        if self._no_audience and "aud" in claims:
            return None  # a token meant for some audience is not one of the aud-less tokens this opt-out admits
        subject = claims.get("sub")
        return subject if isinstance(subject, str) and subject else None

    def _key(self, token: str):
        """Return the key to verify ``token`` with and the algorithms it may use, or (None, [])."""
        if self._jwks is None:
            return self._secret, self._algorithms
        kid = jwt.get_unverified_header(token).get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            return None, []
        key = self._jwks.key(kid)
        if key is None or key.algorithm_name not in self._algorithms:
            return None, []
        return key, [key.algorithm_name]
