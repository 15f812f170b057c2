"""GCRA, the generic cell rate algorithm (as redis-cell and the large API gateways use it), and its in-memory store.

For a limit of N per period, each request "costs" T = period / N, and a caller's state is one
number, its theoretical arrival time (TAT): when it would next be due at the limit's pace. A request
at ``now`` passes when ``max(TAT, now) + T - period <= now`` (the burst of N fits in the period), and
then moves TAT to ``max(TAT, now) + T``; else it is refused until that holds, which is its
Retry-After. So from idle exactly N pass at once, then one every T: never more than the limit, and
nothing to settle, sweep or reserve. With several limits a request passes only when every one lets
it, and only then moves them all.

The Redis store (shared.py) runs this same step in one Lua script; this module's MemoryLimit runs it
in one worker, without REDIS_URL or while Redis fails. State per caller: one float per limit,
forgotten once every TAT has passed.

Pure but for MemoryLimit's lock: no I/O; time comes in as a parameter.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from app.config.rates import Rate

SWEEP_EVERY = 10_000  # checks between sweeps of callers whose every TAT has passed


def step(tats: Sequence[float] | None, now_ms: float, rates: Sequence[Rate]) -> tuple[int | None, float, list[float]]:
    """Apply one request at ``now_ms`` to a caller's TATs (None: a new caller).

    Returns (None, 0, the new TATs) when it passes, or (index of the refusing limit, ms until it
    would pass, the TATs unchanged) when it is refused.
    """
    current = [max(tat, now_ms) for tat in tats] if tats and len(tats) == len(rates) else [now_ms] * len(rates)
    for index, (tat, rate) in enumerate(zip(current, rates, strict=True)):
        allowed_at = tat + rate.interval_ms - rate.period * 1000
        if allowed_at > now_ms:
            return index, allowed_at - now_ms, list(tats or [])
    return None, 0.0, [tat + rate.interval_ms for tat, rate in zip(current, rates, strict=True)]


class MemoryLimit:
    """GCRA for one process: without REDIS_URL, and while Redis fails."""

    def __init__(self, rates: Sequence[Rate]):
        """Start with no caller counted."""
        self.rates = tuple(rates)
        self._tats: dict[str, list[float]] = {}
        self._mutex = threading.Lock()
        self._until_sweep = SWEEP_EVERY

    def check(self, key: str, now_ms: float) -> tuple[int | None, float]:
        """Count one request of ``key``; return (None, 0) to admit it, else (the refusing limit's index, ms to wait)."""
        with self._mutex:
            refused, wait_ms, tats = step(self._tats.get(key), now_ms, self.rates)
            if refused is None:
                self._tats[key] = tats
            self._until_sweep -= 1
            if self._until_sweep <= 0:
                self._until_sweep = SWEEP_EVERY
                for stale in [caller for caller, held in self._tats.items() if max(held) <= now_ms]:
                    del self._tats[stale]
        return refused, wait_ms
