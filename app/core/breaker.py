"""The circuit breaker in front of Redis: closed, open for a second after a failure, then half-open with one probe.

One per process, for the credential store and the rate limits alike (a Redis that hangs stalls
both): while it is open nobody waits on Redis, everyone goes on from the process's own copy and
counts in memory; when the time-out ends, the first caller probes with one call (bounded by one
socket timeout: no retry on a timeout) while the others keep going on without Redis; the probe's
success closes it for everyone, its failure opens it for another time-out. Once it is open only the
probe's outcome counts: a call that was already on its way when it opened (a healthy cluster node's
answer, another thread's late timeout) neither closes it nor starts a second probe. A Redis that
hangs then costs one slow call per process per time-out, as one that refuses does. Only an outage
opens it (no answer, a refused connection): an error Redis answers with (NOPERM, OOM, READONLY) fails
that one call, and the caller reports it as an answer.

Written here rather than taken from a library: pybreaker, the well-kept one, holds one lock across
every call it guards (a hanging probe would queue every thread of the worker behind it), and it
counts failures before it opens, where one timeout is already the answer. Pure: time comes in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from app.core.ports import NullRecorder, Recorder

RETRY_AFTER = 1.0  # seconds a failed Redis is left alone before one caller probes it
PROBE_LIMIT = 5.0  # seconds after which a probe that never reported back is presumed lost, and another may go

log = logging.getLogger("ice_servers")


class CircuitBreaker:
    """Decide, per call, whether Redis may be asked now; hear how each call went."""

    def __init__(self, retry_after: float = RETRY_AFTER, clock: Callable[[], float] = time.monotonic, recorder: Recorder | None = None):
        """Start closed."""
        self.retry_after = retry_after
        self._clock = clock
        self._recorder = recorder or NullRecorder()
        self._mutex = threading.Lock()
        self._open = False  # read without the lock on the hot path: one attribute, written under it
        self._retry_at = 0.0  # when the next probe may go
        self._probe_since: float | None = None  # when the probe in flight went, if one is...
        self._prober: int | None = None  # ...and the thread that makes it: only its outcome counts while open
        self.reason = ""  # why it opened, in one line (no secret: the stores' own descriptions)

    @property
    def is_open(self) -> bool:
        """Tell whether Redis is in its time-out or being probed (a look that claims nothing)."""
        return self._open

    def resting(self) -> bool:
        """Tell whether a caller should not even try Redis now: open, and no probe is due (or one is in flight)."""
        if not self._open:
            return False
        with self._mutex:
            now = self._clock()
            if not self._open:
                return False
            if self._probe_since is not None and now - self._probe_since < PROBE_LIMIT:
                return True
            return now < self._retry_at

    def allow(self) -> bool:
        """Tell whether this caller may call Redis now: always while closed; once open, only the one probe when it is due."""
        if not self._open:
            return True
        with self._mutex:
            if not self._open:
                return True
            now = self._clock()
            if now < self._retry_at or (self._probe_since is not None and now - self._probe_since < PROBE_LIMIT):
                return False
            self._probe_since, self._prober = now, threading.get_ident()  # this caller probes; the others go on without Redis
            return True

    def succeeded(self) -> None:
        """Hear that a call answered: the probe's answer closes it (and says so once); any other is ignored while open."""
        if not self._open:
            return
        with self._mutex:
            if not self._open or self._probe_since is None or self._prober != threading.get_ident():
                return
            self._open, self._probe_since, self._prober = False, None, None
        self._recorder.store_local(False)
        log.info("Redis answers again: the shared cache and the shared rate limits are back")

    def failed(self, reason: str) -> None:
        """Hear that a call failed: open for ``retry_after`` (a failed probe too); say so once when it opens."""
        with self._mutex:
            now = self._clock()
            opened = not self._open
            if not opened and (self._probe_since is None or self._prober != threading.get_ident()):
                return  # already open, and not the probe: a call that was on its way when it opened
            self._open, self._probe_since, self._prober, self._retry_at = True, None, None, now + self.retry_after
            self.reason = reason
        if opened:
            self._recorder.store_local(True)
            log.warning(
                "Shared cache unavailable (%s): serving from this process's cache and counting rate limits in memory; "
                "one request probes Redis every %g s",
                reason,
                self.retry_after,
            )
