"""The egress ceiling: whether Cloudflare credentials may be handed out, from one month-to-date reading shared by the fleet.

Whoever claims ``usage:ask`` in the shared cache (a claim lasting one interval) asks Cloudflare's
analytics in a thread of its own and stores the reading under ``usage``; every worker of every host
reads that stored reading at most once a second, so a new reading reaches all of them within the
interval plus a second or two, and requests never wait on the analytics API. A failed query keeps
the last reading, which counts until it is ``FRESH_INTERVALS`` intervals old; without a fresh one
``ICE_USAGE_UNKNOWN`` decides (open: serve Cloudflare credentials; closed: as over the limit). A
reading of this month past the limit counts however old: a month's egress never falls.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.core.background import daemon_spawner
from app.core.errors import StoreUnavailable
from app.core.ports import NullRecorder, Recorder
from app.core.store_policy import StorePolicy
from app.spend.analytics import AnalyticsClient, UsageUnavailable, month_start

READING = "usage"  # and the month: a late reading of last month (or a host whose clock lags) never overwrites this one
ASK = "usage:ask"  # and the month: the first reading of a month is never held behind last month's claim
ERROR = "usage:error"  # the last failed reading: when, and why (for ice-status)
RECHECK = 1.0  # seconds a worker trusts its view of the stored reading
FRESH_INTERVALS = 3  # a reading counts this many intervals; older, the state is unknown
READING_MEMORY = 40 * 86_400  # seconds a reading is kept in the shared cache (a month and then some)

log = logging.getLogger("ice_servers")


@dataclass(frozen=True)
class Reading:
    """Month-to-date TURN egress as Cloudflare's analytics reported it."""

    egress_bytes: int
    read_at: float  # when the query was sent
    month: str  # YYYY-MM-01: the month it counts
    source: str = ""  # the account and TURN key it counts (a rotated key or account starts afresh)

    def to_json(self) -> str:
        """Serialize for the shared cache."""
        return json.dumps({"egressBytes": self.egress_bytes, "readAt": self.read_at, "month": self.month, "source": self.source})

    @classmethod
    def from_json(cls, raw: str | None) -> Reading | None:
        """Parse a stored reading; anything else is no reading."""
        try:
            data = json.loads(raw)
            return cls(int(data["egressBytes"]), float(data["readAt"]), str(data["month"]), str(data.get("source", "")))
        except (TypeError, ValueError, KeyError, AttributeError):
            return None


class EgressGuard:
    """Say whether the month's TURN egress is past ``ICE_EGRESS_LIMIT_GB``, fleet-wide, without waiting."""

    def __init__(
        self,
        analytics: AnalyticsClient,
        policy: StorePolicy,
        limit_bytes: int,
        interval: int,
        unknown_closed: bool = False,
        clock: Callable[[], float] = time.time,
        spawn: Callable[[Callable[[], None]], None] | None = None,
        recorder: Recorder | None = None,
    ):
        """Wire the analytics client and the stores; nothing is asked until the first check."""
        self.limit_bytes = limit_bytes
        self.interval = interval
        self._analytics = analytics
        self._policy = policy
        self._unknown_closed = unknown_closed
        self._clock = clock
        self._spawn = spawn or daemon_spawner("ice-usage-reading")
        self._recorder = recorder or NullRecorder()
        self._over = unknown_closed
        self._state: str | None = None  # over, under, unknown: what was last logged
        self._recheck_at = float("-inf")
        self._source = analytics.counts() if hasattr(analytics, "counts") else ""  # the account and key a reading counts

    def over(self) -> bool:
        """Tell whether Cloudflare credentials must not be handed out now (the request path: no waiting)."""
        now = self._clock()
        if now < self._recheck_at:
            return self._over
        self._recheck_at = now + min(RECHECK, self.interval / 2)
        store = self._store(now)
        reading = self._stored(store, now)
        if reading is None or reading.month != month_start(now) or reading.source != self._source or now - reading.read_at >= self.interval:
            if self._ask_in_background(store, now):
                reading = self._stored(store, now)  # serverless, this request just took the reading: decide on it
        this_month = reading is not None and reading.month == month_start(now) and reading.source == self._source
        fresh = this_month and now - reading.read_at < FRESH_INTERVALS * self.interval
        # A month's egress never falls: a reading past the limit stays true for the rest of the month, however old
        # (a worker that was idle for a few intervals must not hand out Cloudflare credentials on its first request).
        past = this_month and reading.egress_bytes > self.limit_bytes
        over = True if past else False if fresh else self._unknown_closed
        mine = reading is not None and reading.source == self._source
        self._recorder.egress(
            reading.egress_bytes if this_month else None, self.limit_bytes, reading.read_at if mine else None, self.interval
        )
        self._log_change("over" if past else "under" if fresh else "unknown", reading, now)
        self._over = over
        return over

    def reading(self) -> Reading | None:
        """Return the stored reading (for ice-status), or None; raise StoreUnavailable."""
        return Reading.from_json(self._policy.shared.read(_reading_key(self._clock())))

    def last_failure(self) -> tuple[float, str] | None:
        """Return when the last reading failed and why (for ice-status), or None; raise StoreUnavailable."""
        try:
            data = json.loads(self._policy.shared.read(ERROR) or "null")
            return float(data["at"]), str(data["message"])
        except (TypeError, ValueError, KeyError):
            return None

    def _stored(self, store, now: float) -> Reading | None:
        """Return the reading the store holds, or None (the in-process store while the shared one fails).

        A reading from the shared store is kept in the in-process one too, so that a worker that
        loses Redis goes on deciding on the last reading it saw.
        """
        local, key = self._policy.local, _reading_key(now)
        try:
            raw = store.read(key)
        except StoreUnavailable as exc:
            self._policy.failed(exc)
            return Reading.from_json(local.read(key))
        if raw is not None and store is not local:
            local.write(key, raw, READING_MEMORY)
        return Reading.from_json(raw)

    def _ask_in_background(self, store, now: float) -> bool:
        """Claim this interval's query; if this worker got it, ask the analytics API in a thread (serverless: now); True: asked."""
        ask = f"{ASK}:{month_start(now)}"
        try:
            claimed = store.claim(ask, self.interval)
        except StoreUnavailable as exc:
            self._policy.failed(exc)
            store = self._policy.local
            claimed = store.claim(ask, self.interval)
        if not claimed:
            return False
        try:
            self._spawn(lambda: self._ask(store, now))
        except RuntimeError:  # no thread could be started (interpreter shutting down)
            return False
        return True

    def _ask(self, store, now: float) -> None:
        """Query the analytics API once; store the reading, or log why there is none."""
        try:
            egress = self._analytics.egress_bytes(now)
        except UsageUnavailable as exc:
            self._recorder.usage_reading("failed")
            self._write(store, ERROR, json.dumps({"at": now, "message": str(exc)}))
            last = self._stored(store, now)
            kept = f"keeping the reading taken {int(self._clock() - last.read_at)} s ago" if last else "no reading yet"
            log.warning("Could not read TURN usage from Cloudflare's analytics API: %s; %s", exc, kept)
            return
        self._recorder.usage_reading("success")
        reading = Reading(egress, now, month_start(now), self._source)
        self._write(store, _reading_key(now), reading.to_json())
        self._recheck_at = float("-inf")  # this worker sees it at its next request
        log.info("TURN usage this month: %s (ICE_EGRESS_LIMIT_GB=%g)", _gb(egress), self.limit_bytes / 1e9)

    def _write(self, store, name: str, value: str) -> None:
        """Write a named value in ``store`` and in the process's own store (a worker that loses Redis still has it)."""
        for target in {id(store): store, id(self._policy.local): self._policy.local}.values():
            try:
                target.write(name, value, READING_MEMORY)
            except StoreUnavailable as exc:
                self._policy.failed(exc)

    def _store(self, now: float):
        """Return the shared store, or the in-process one while the shared one is in its time-out."""
        return self._policy.local if self._policy.use_local(now) else self._policy.shared

    def _log_change(self, state: str, reading: Reading | None, now: float) -> None:
        """Log a change of state once per process, not per request."""
        if state == self._state:
            return
        previous, self._state = self._state, state
        limit = f"ICE_EGRESS_LIMIT_GB={self.limit_bytes / 1e9:g}"
        if state == "unknown":
            age = f"the last is {int(now - reading.read_at)} s old" if reading else "none yet"
            if self._unknown_closed:
                log.warning("No fresh TURN usage reading for %s (%s): serving as if over it (ICE_USAGE_UNKNOWN=closed)", limit, age)
            else:
                log.warning("No fresh TURN usage reading for %s (%s): serving Cloudflare credentials (ICE_USAGE_UNKNOWN=open)", limit, age)
            return
        egress = _gb(reading.egress_bytes)
        if state == "over":
            log.warning("TURN egress this month is %s, past %s: not handing out Cloudflare credentials", egress, limit)
        elif previous is not None:
            log.warning("TURN egress this month is %s, under %s: handing out Cloudflare credentials again", egress, limit)
        else:
            log.info("TURN egress this month is %s, under %s", egress, limit)


def _reading_key(now: float) -> str:
    """Name the stored reading of ``now``'s month."""
    return f"{READING}:{month_start(now)}"


def _gb(count: int) -> str:
    """Format bytes as decimal GB (10^9 bytes), as Cloudflare bills them."""
    return f"{count / 1e9:.3f} GB"
