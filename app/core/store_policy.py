"""The Redis failure policy: use the shared store, and for a short time-out after it fails the in-process one.

One policy per process, for every credential scope: when Redis stops answering, every scope turns
to its in-process store at once, and the shared store is tried again after ``SHARED_RETRY_AFTER``.
The change is logged once each way, not per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from app.core.errors import StoreUnavailable
from app.core.ports import NullRecorder, Recorder

SHARED_RETRY_AFTER = 1.0  # seconds a failed Redis is left alone before it is tried again

log = logging.getLogger("ice_servers")


class StorePolicy:
    """Choose between the shared store and this process's own."""

    def __init__(self, shared, clock: Callable[[], float] = time.time, recorder: Recorder | None = None):
        """Wrap ``shared``; without Redis (a MemoryStore) it is the process's own store already, else it hands one (fallback())."""
        self.shared = shared
        self.local = shared.fallback() if shared.shared else shared
        self._clock = clock
        self._recorder = recorder or NullRecorder()
        self._down_until = 0.0
        self._down = False

    def stores(self, scope: str):
        """Return the (shared, local) stores of ``scope``; the same object twice without Redis."""
        if not scope:
            return self.shared, self.local
        shared = self.shared.scoped(scope)
        return shared, (shared if self.local is self.shared else self.local.scoped(scope))

    def use_local(self, now: float) -> bool:
        """Tell whether the shared store is in its time-out (and say so when it leaves it)."""
        if now < self._down_until:
            return True
        if self._down:
            self._down = False
            self._recorder.store_local(False)
            log.info("Trying the shared cache again")
        return False

    def failed(self, exc: StoreUnavailable) -> None:
        """Put the shared store in a short time-out."""
        if not self._down:
            self._recorder.store_local(True)
            log.warning("Shared cache unavailable (%s): serving from this process's cache", exc)
        self._down = True
        self._down_until = self._clock() + SHARED_RETRY_AFTER
