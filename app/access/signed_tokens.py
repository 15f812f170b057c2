"""The access tokens of token mode: minted by the operator's backend, checked here.

An access token is ``"{expiry}.{signature}"``: ``expiry`` a Unix time, ``signature`` the hex
HMAC-SHA256 of ``expiry`` under ``ICE_ACCESS_SECRET``. The operator's own backend mints one for
each signed-in user (five lines in the docs) and the browser sends it as ``Authorization:
Bearer <token>``.

Pure logic: no Flask, no I/O; time comes in as a parameter.
"""

from __future__ import annotations

import hashlib
import hmac

from app.core.numbers import parse_digits

MAX_TOKEN_LIFETIME = 86_400  # seconds: a token expiring further ahead than this is refused


def mint_token(secret: str, expires_at: int) -> str:
    """Return an access token valid until the Unix time ``expires_at``."""
    return f"{expires_at}.{_signature(secret, str(expires_at))}"


def token_valid(secret: str, authorization: str | None, now: float) -> bool:
    """Tell whether an ``Authorization`` header carries a valid, unexpired token.

    Every input takes the same steps (parse, sign, compare in constant time, check the expiry) and
    gives one yes or no, so neither timing nor the answer tells which part was wrong.
    """
    token = authorization[7:].strip() if authorization and authorization[:7].lower() == "bearer " else ""
    expiry, _, signature = token.partition(".")
    expected = _signature(secret, expiry)
    signed = hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))
    expires_at = parse_digits(expiry, max_digits=12)
    fresh = expires_at is not None and now < expires_at <= now + MAX_TOKEN_LIFETIME
    return signed & fresh


def _signature(secret: str, message: str) -> str:
    """Return the hex HMAC-SHA256 of ``message``."""
    return hmac.new(secret.encode(), message.encode("utf-8", "replace"), hashlib.sha256).hexdigest()
