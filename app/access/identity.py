"""The opaque name a verified user goes by: a keyed hash of the token's subject.

The subject may be an e-mail address, so it never leaves the process: Cloudflare's
``customIdentifier``, the TURN username of the shared-secret provider, the cache keys and the
rate limiter's keys all carry this value instead. It is computed, never stored: the same on every
worker, every host and the CLI, and across restarts, for as long as the keying secret stays.

Pure: no I/O, no Flask.
"""

from __future__ import annotations

import hashlib
import hmac

# Derive a key of our own from the deployment's secret, so that the identifier is no HMAC an
# attacker could ask the secret's other users (Cloudflare, coturn) to compute.
_CONTEXT = b"ice-servers user id v1"
ID_BYTES = 16  # 128 bits: no two users collide in practice; 32 hex characters


class UserIds:
    """Turn verified subjects into opaque, stable user identifiers."""

    def __init__(self, secret: str | None):
        """Key with ``secret``; without one, identifiers are plain hashes (used only as rate-limit keys)."""
        self._key = hmac.new((secret or "").encode(), _CONTEXT, hashlib.sha256).digest()

    def __repr__(self) -> str:
        """Name the object, never the key."""
        return "UserIds()"

    def opaque(self, subject: str) -> str:
        """Return the identifier of ``subject``: 32 hex characters."""
        return hmac.new(self._key, subject.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[: ID_BYTES * 2]
