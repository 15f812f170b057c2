"""The rate limit on the credential endpoints: one GCRA check per request, fleet-wide in Redis, per worker while it fails.

One script call per request (shared.py); Retry-After is what the algorithm says is left. A refusal
moves nothing in GCRA, so until the wait it named has passed Redis would refuse that caller again:
each worker remembers it and refuses at once, and a flood costs Redis one call per wait, not one per
request. While Redis fails, each worker runs the same algorithm in memory (gcra.MemoryLimit): the
process's circuit breaker (app/core/breaker.py, shared with the credential store) keeps every request
off Redis during its time-out, then lets one request probe it while the others count in memory. The
change is logged once each way, by the breaker.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis.exceptions import (
    ClusterError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from app.config.rates import Rate
from app.core.breaker import CircuitBreaker
from app.limits.gcra import MemoryLimit
from app.limits.shared import SharedLimit

REFUSED_MEMORY = 10_000  # callers whose refusal one worker remembers at most
REFUSAL_LOG_INTERVAL = 60.0  # seconds between warnings that Redis refuses the script (NOPERM, OOM)

log = logging.getLogger("ice_servers")


@dataclass(frozen=True)
class Refusal:
    """A 429: its JSON body (built once) and its headers."""

    body: bytes
    headers: dict[str, str]


class RateLimit:
    """Count requests per key against ICE_RATE_LIMIT for the whole fleet in Redis, or in memory while it fails."""

    def __init__(
        self,
        rates: Sequence[Rate],
        client=None,
        message: str = "too many requests",
        clock: Callable[[], float] = time.monotonic,
        breaker: CircuitBreaker | None = None,
    ):
        """Take the parsed rates; ``client``: the Redis client to count in (None: each worker counts in memory).

        ``clock``: this process's monotonic seconds (a stepped wall clock moves nothing here; Redis counts on its own TIME).
        ``breaker``: the process's circuit breaker in front of Redis, shared with the credential store (one of its own if None).
        """
        self.rates = tuple(rates)
        self._clock = clock
        self._refused: dict[str, float] = {}  # key -> when Redis would let it by, oldest refusal first
        self._refused_mutex = threading.Lock()
        self._shared = SharedLimit(client, self.rates) if client is not None else None
        self._memory = MemoryLimit(self.rates)
        self._breaker = breaker or CircuitBreaker(clock=clock)
        self._refusal_logged_at = float("-inf")
        self._body = json.dumps({"error": message, "status": 429}).encode()

    def hit(self, key: str) -> Refusal | None:
        """Count one request of ``key``; return None to admit it, else its 429."""
        now = self._clock()
        if self._shared is not None:
            refused_until = self._refused.get(key)
            if refused_until is not None and now < refused_until:
                return self._refusal((refused_until - now) * 1000)
            if self._breaker.allow():  # closed; or this request is the one probe of a Redis in its time-out
                try:
                    refused, wait_ms = self._shared.check(key)
                except (RedisError, RedisClusterException) as exc:
                    if isinstance(exc, ResponseError) and not isinstance(exc, ClusterError | TryAgainError):
                        self._breaker.succeeded()  # Redis answered (NOPERM, OOM...): it is there; this request counts in memory
                        self._refused_by_redis(exc, now)
                    else:
                        self._breaker.failed(f"the rate limit's script: {type(exc).__name__}")
                else:
                    self._breaker.succeeded()
                    if refused is None:
                        return None
                    self._remember(key, now + wait_ms / 1000)  # Redis decided after ``now``: never past its own answer
                    return self._refusal(wait_ms)
        refused, wait_ms = self._memory.check(key, now * 1000)
        return None if refused is None else self._refusal(wait_ms)

    def _refused_by_redis(self, exc: ResponseError, now: float) -> None:
        """Say, at most once a minute, that Redis refuses the rate limit's script (an ACL or a full Redis): counted per worker."""
        if now >= self._refusal_logged_at + REFUSAL_LOG_INTERVAL:
            self._refusal_logged_at = now
            log.warning("Redis refuses the rate limit's script (%s): counting per worker in memory meanwhile", _refusal_kind(exc))

    def _remember(self, key: str, until: float) -> None:
        """Refuse ``key`` without asking Redis until ``until``; past REFUSED_MEMORY callers, the oldest refusal is forgotten."""
        with self._refused_mutex:  # gthread: several threads of a worker refuse at once
            self._refused.pop(key, None)
            self._refused[key] = until
            while len(self._refused) > REFUSED_MEMORY:
                del self._refused[next(iter(self._refused))]

    def _refusal(self, wait_ms: float) -> Refusal:
        """Build a 429 whose Retry-After is the whole seconds until the caller would pass (at least 1)."""
        retry_after = str(max(1, math.ceil(wait_ms / 1000)))
        return Refusal(self._body, {"Retry-After": retry_after, "Content-Type": "application/json", "Cache-Control": "no-store"})


def _refusal_kind(exc: ResponseError) -> str:
    """Name what Redis answered, in a few words and never its whole text."""
    kinds = {
        OutOfMemoryError: "OOM: Redis is full, maxmemory",
        NoPermissionError: "NOPERM: the ACL user lacks a command",
        ReadOnlyError: "READONLY: a replica",
    }
    for kind, words in kinds.items():
        if isinstance(exc, kind):
            return words
    text = str(exc)
    for code, words in (("OOM", kinds[OutOfMemoryError]), ("NOPERM", kinds[NoPermissionError]), ("READONLY", kinds[ReadOnlyError])):
        if code in text:  # Redis before 7 (and some managed ones) wrap a script's refusal as "ERR Error running script ... -OOM"
            return words
    return (text.split() or [type(exc).__name__])[0][:20]
