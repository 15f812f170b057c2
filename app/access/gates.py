"""The access gate of each ICE_ACCESS_MODE, as a plain function of the request's headers.

A gate takes the WSGI environ (it reads only ``HTTP_AUTHORIZATION``, ``HTTP_ORIGIN`` and
``HTTP_REFERER``) and returns the verified user's opaque id (jwt mode), or None; it raises
``Refused`` to turn the request away. Every refusal of a mode is one answer, byte for byte: missing,
malformed, expired, forged and unverifiable tokens alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

from app.access.identity import UserIds
from app.access.origins import origin_allowed
from app.access.signed_tokens import token_valid

TOKEN_REQUIRED = "a valid access token is required"
ORIGIN_REFUSED = "this origin may not ask for ICE servers"

Gate = Callable[[Mapping[str, str]], "str | None"]


class Refused(Exception):
    """The gate turns the request away: a JSON error of ``status``, with ``headers``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        """Keep the status, the one-line message and the headers (WWW-Authenticate on a 401)."""
        super().__init__(message)
        self.status = status
        self.body = json.dumps({"error": message, "status": status}).encode()
        self.headers = dict(headers or {})


def open_gate(environ: Mapping[str, str]) -> None:
    """Admit everyone (ICE_ACCESS_MODE=open)."""
    return None


def origin_gate(allowed: tuple[str, ...]) -> Gate:
    """Admit the pages of CORS_ORIGINS only (their Origin, or without one their Referer's origin)."""

    def gate(environ: Mapping[str, str]) -> None:
        if not origin_allowed(environ.get("HTTP_ORIGIN"), environ.get("HTTP_REFERER"), allowed):
            raise Refused(403, ORIGIN_REFUSED)

    return gate


def token_gate(secret: str, clock: Callable[[], float] = time.time) -> Gate:
    """Admit a valid access token of ICE_ACCESS_SECRET (token mode)."""
    refusal = (401, TOKEN_REQUIRED, {"WWW-Authenticate": "Bearer"})

    def gate(environ: Mapping[str, str]) -> None:
        if not token_valid(secret, environ.get("HTTP_AUTHORIZATION"), clock()):
            raise Refused(*refusal)

    return gate


def jwt_gate(subject_of: Callable[[str | None], str | None], user_ids: UserIds) -> Gate:
    """Admit a JWT of the identity provider (jwt mode); return its subject's opaque id, never the subject."""
    refusal = (401, TOKEN_REQUIRED, {"WWW-Authenticate": "Bearer"})

    def gate(environ: Mapping[str, str]) -> str:
        subject = subject_of(environ.get("HTTP_AUTHORIZATION"))
        if subject is None:
            raise Refused(*refusal)
        return user_ids.opaque(subject)

    return gate
