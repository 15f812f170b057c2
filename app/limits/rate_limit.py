"""The rate limit on the credential endpoints: one check per request, counted for the whole fleet, a cheap 429.

The count is a moving window in the Redis REDIS_URL names, shared by every worker and host, and
exact (app/fleet_count.py: a caller far from its limit is admitted without a round trip and
settled in the background; near it, every request is checked in Redis). It is asked once per
request, by the two credential views only, and a refusal's answer is built once. While Redis
fails, each worker counts in memory (app/local_count.py) and tries Redis again after a second (the
failure is logged once). The limits library parses ICE_RATE_LIMIT.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from limits import parse_many
from redis.exceptions import RedisClusterException, RedisError

from app.limits.fleet_count import FleetCount, Limit
from app.limits.local_count import LocalCount

SHARED_RETRY_AFTER = 1.0  # seconds a failed Redis is left alone before the shared count is tried again

log = logging.getLogger("ice_servers")


class RateLimit:
    """Count requests per key against ICE_RATE_LIMIT for the whole fleet in Redis, or in memory while it fails."""

    def __init__(self, rate: str, client=None, message: str = "too many requests", clock: Callable[[], float] = time.monotonic):
        """Parse the rate; ``client``: the Redis client to count in (None: each worker counts in memory)."""
        self.items = parse_many(rate)
        self._clock = clock
        limits = [Limit(item.amount, item.get_expiry() * 1000) for item in self.items]
        self._shared = FleetCount(client, limits, clock) if client is not None else None
        self._local = LocalCount(limits, clock)
        self._shared_down_until = 0.0
        self._shared_down = False
        self.refusals = [_refusal(item, message) for item in self.items]

    def hit(self, key: str) -> tuple[bytes, dict] | None:
        """Count one request of ``key``; return None to admit it, else the 429's body and headers."""
        now = self._clock()
        if self._shared is not None and now >= self._shared_down_until:
            try:
                over = self._shared.admit(key)
                if self._shared_down:
                    self._shared_down = False
                    log.info("Rate limits are counted in the shared cache again")
                return None if over is None else self.refusals[over]
            except (RedisError, RedisClusterException) as exc:
                if not self._shared_down:
                    log.warning("Rate limit storage unavailable (%s): counting per worker in memory meanwhile", type(exc).__name__)
                self._shared_down, self._shared_down_until = True, now + SHARED_RETRY_AFTER
        over = self._local.admit(key)
        return None if over is None else self.refusals[over]


def _refusal(item, message: str) -> tuple[bytes, dict]:
    """Build the 429 of ``item`` once: a JSON error and Retry-After the window's length (a free slot comes no later)."""
    body = json.dumps({"error": message, "status": 429}).encode()
    return body, {"Retry-After": str(item.get_expiry()), "Content-Type": "application/json", "Cache-Control": "no-store"}
