"""GCRA, the generic cell rate algorithm (as redis-cell and the large API gateways use it), and its in-memory store.

For a limit of N per period, each request "costs" T = period / N, and a caller's state is one
number, its theoretical arrival time (TAT): when it would next be due at the limit's pace. A request
at ``now`` passes when ``max(TAT, now) + T - period <= now`` (the burst of N fits in the period), and
then moves TAT to ``max(TAT, now) + T``; else it is refused until that holds, which is its
Retry-After. So from idle exactly N pass at once, then one every T: never more than the limit, and
nothing to settle, sweep or reserve. With several limits a request passes only when every one lets
it, and only then moves them all; a refused one is told the longest wait.

The Redis store (shared.py) runs this same step in one Lua script; this module's MemoryLimit runs it
in one worker, without REDIS_URL or while Redis fails. State per caller: one float per limit,
forgotten once every TAT has passed, and at most MEMORY_CALLERS callers.

Pure but for MemoryLimit's lock: no I/O; time comes in as a parameter.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

from app.config.rates import Rate

MEMORY_CALLERS = 50_000  # callers one worker counts at most (about 200 bytes each); the least recently counted go first


def step(tats: Sequence[float] | None, now_ms: float, rates: Sequence[Rate]) -> tuple[int | None, float, list[float]]:
    """Apply one request at ``now_ms`` to a caller's TATs (None: a new caller).

    Returns (None, 0, the new TATs) when it passes, or (index of the limit with the longest wait, ms
    until every limit would let it pass, the TATs unchanged) when it is refused.
    """
    current = [max(tat, now_ms) for tat in tats] if tats and len(tats) == len(rates) else [now_ms] * len(rates)
    refused, wait_ms = None, 0.0
    for index, (tat, rate) in enumerate(zip(current, rates, strict=True)):
        # In this order: (tat + T - period) - now on clocks of about 1e9 ms rounds to a hair above 0 for a new caller
        # of "1 per ...", who was then refused for a second.
        wait = (tat - now_ms) + (rate.interval_ms - rate.period * 1000)
        if wait > wait_ms:
            refused, wait_ms = index, wait
    if refused is not None:
        return refused, wait_ms, list(tats or [])
    return None, 0.0, [tat + rate.interval_ms for tat, rate in zip(current, rates, strict=True)]


class MemoryLimit:
    """GCRA for one process: without REDIS_URL, and while Redis fails.

    Callers are kept in the order they were last counted: those whose every TAT has passed are
    forgotten from the front as others are counted, and past MEMORY_CALLERS the least recently
    counted go (a forgotten caller starts afresh: bounded memory over exactness, in a fallback).
    """

    def __init__(self, rates: Sequence[Rate]):
        """Start with no caller counted."""
        self.rates = tuple(rates)
        self._tats: dict[str, list[float]] = {}
        self._mutex = threading.Lock()

    def check(self, key: str, now_ms: float) -> tuple[int | None, float]:
        """Count one request of ``key``; return (None, 0) to admit it, else (the refusing limit's index, ms to wait)."""
        with self._mutex:
            held = self._tats.pop(key, None)
            refused, wait_ms, tats = step(held, now_ms, self.rates)
            if refused is None or held is not None:
                self._tats[key] = tats if refused is None else held
            for caller, due in list(itertools.islice(self._tats.items(), 2)):  # two for one: the front stays clear
                if caller != key and max(due) <= now_ms:
                    del self._tats[caller]
            while len(self._tats) > MEMORY_CALLERS:
                del self._tats[next(iter(self._tats))]
        return refused, wait_ms
