"""The rate limit on the credential endpoints: one check per request, one Redis round trip, a cheap 429.

The limits library's moving window counts exactly (no burst at a window's edge), shared by every
worker and host through the Redis REDIS_URL names. It is asked once per request, by the two
credential views only; Flask-Limiter evaluated shared limits in a before-request hook for every
route and more than once per request. A refusal costs the same round trip as an admission, and its
answer is built once. While Redis fails, each worker counts in memory and tries Redis again after
a second (the failure is logged once).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from limits import parse_many
from limits.errors import ConfigurationError, StorageError
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisClusterException, RedisError

SHARED_RETRY_AFTER = 1.0  # seconds a failed Redis is left alone before the shared count is tried again
SCOPE = "credentials"  # both credential endpoints share one count per caller

log = logging.getLogger("ice_servers")


class RateLimit:
    """Count requests per key against ICE_RATE_LIMIT in the shared storage, or in memory while it fails."""

    def __init__(
        self,
        rate: str,
        storage_uri: str = "memory://",
        options: dict | None = None,
        message: str = "too many requests",
        clock: Callable[[], float] = time.monotonic,
    ):
        """Parse the rate; the shared storage is connected on first use (a cluster may be down at start)."""
        self.items = parse_many(rate)
        self._uri, self._options = storage_uri, dict(options or {})
        self._clock = clock
        self._shared: MovingWindowRateLimiter | None = None
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._shared_down_until = 0.0
        self._shared_down = False
        self.refusals = {item: _refusal(item, message) for item in self.items}

    def hit(self, key: str) -> tuple[bytes, dict] | None:
        """Count one request of ``key``; return None to admit it, else the 429's body and headers."""
        for item in self.items:
            if not self._hit(item, key):
                return self.refusals[item]
        return None

    def _hit(self, item, key: str) -> bool:
        """Count ``key`` against ``item`` in the shared storage, or this worker's memory while it fails."""
        now = self._clock()
        if now >= self._shared_down_until and self._uri != "memory://":
            try:
                admitted = self._shared_limiter().hit(item, SCOPE, key)
                if self._shared_down:
                    self._shared_down = False
                    log.info("Rate limits are counted in the shared cache again")
                return admitted
            except (StorageError, RedisError, RedisClusterException, ConfigurationError) as exc:
                if not self._shared_down:
                    log.warning("Rate limit storage unavailable (%s): counting per worker in memory meanwhile", type(exc).__name__)
                self._shared_down, self._shared_down_until = True, now + SHARED_RETRY_AFTER
        return self._local.hit(item, SCOPE, key)

    def _shared_limiter(self) -> MovingWindowRateLimiter:
        """Connect to the shared storage on first use."""
        if self._shared is None:
            storage = storage_from_string(self._uri, wrap_exceptions=True, **self._options)
            self._shared = MovingWindowRateLimiter(storage)
        return self._shared


def _refusal(item, message: str) -> tuple[bytes, dict]:
    """Build the 429 of ``item`` once: a JSON error and Retry-After the window's length (a free slot comes no later)."""
    body = json.dumps({"error": message, "status": 429}).encode()
    return body, {"Retry-After": str(item.get_expiry()), "Content-Type": "application/json"}
