"""The core's exceptions: what its ports (the store, the providers) raise, and what an operator action raises.

Each adapter translates its own failures into these once (``raise ... from``), with a one-line
message that never holds a secret.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """Cloudflare could not give a credential; ``retry_after`` is its 429 hint in seconds, if any."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        """Keep the HTTP status and Retry-After beside the one-line message."""
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError):
    """No answer: connection refused, DNS, TLS or timeout."""


class UpstreamRejected(UpstreamError):
    """Cloudflare answered with an error status (401, 404, 429, 5xx...)."""


class UpstreamInvalid(UpstreamError):
    """Cloudflare answered success, but not with usable ICE servers."""


class StoreUnavailable(Exception):
    """The shared cache did not answer in time, or answered with an error (``answered``: NOPERM, OOM, READONLY...).

    Only the first kind is an outage the circuit breaker keeps callers away from; the second fails
    that one call (Redis is there and answers at once).
    """

    def __init__(self, message: str, answered: bool = False):
        """Keep whether Redis answered beside the one-line message."""
        super().__init__(message)
        self.answered = answered


class RefreshError(Exception):
    """A forced refresh failed; the message is one line for the operator."""


class MintDeferred(Exception):
    """A user's own credential would have to be minted now, and the fleet's budget of mints has none left this second."""
