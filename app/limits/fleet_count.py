"""The rate limit's fleet-wide count in Redis: exact, with no round trip on the request path while a caller is far from its limit.

Every admission is one entry in a moving window (a Redis list of times, as in the limits
library), shared by every worker and host. A caller far from its limit is admitted by the worker
alone, at most once per caller per settlement; a background thread settles all such admissions
every ``PERIOD`` in one script call, which also fetches the callers that are near a limit ("hot").
A hot caller, or a second request of one caller within a settlement, is checked in Redis before
it is admitted (one round trip), so the last admissions below a limit are always counted there.
A caller Redis finds full to its limit is then refused by that worker alone until its oldest
admission leaves the window. Limits under ``ALONE_FACTOR`` margins are checked in Redis every time.

Why the count stays exact: a process holds at most ``PER_PROCESS`` admissions of a caller alone
and unknown to Redis (one in the batch being settled, one in the batch being filled: it admits a
caller alone at most once per batch and never after its hot list has the caller), and it admits
alone only under limits over ``ALONE_FACTOR`` x the margin its last settlement handed it. Redis
keeps, per process, the smaller of the last two margins it handed (admissions made under the older
one may still be on their way); a check in Redis keeps ``PER_PROCESS`` free for every process whose
smaller margin let it admit alone under that limit, and, once the caller is hot, only for those not
settled twice since. The margin, ``PER_PROCESS`` for each process that settled in the last
``PROCESS_MEMORY_MS`` and one more, is more than all of them can hold: a caller becomes hot when
its count reaches ``limit - margin``. Margins grow as processes join, faster than every process
settles (eight workers starting): the margins kept per process are what keep the count exact then.
A worker whose last settlement is older than ``STALE_AFTER`` admits nobody alone, and an idle
worker settles, then leaves the count; so does a worker that exits, after the settlement in flight
(none lands after its leave). All times are Redis's (``TIME``), so the hosts' clocks do not matter.
Every key carries one hash tag: one script settles a batch, on a cluster too (the rate limit's few
calls per second go to one node). What it does not cover: a worker that stalls for over
``PROCESS_MEMORY_MS`` with a batch in hand may land up to ``PER_PROCESS`` admissions over a limit.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.core.background import daemon_spawner

PERIOD = 0.05  # seconds between settlements while requests come
STALE_AFTER = 2 * PERIOD  # a worker whose hot list is older than this admits nobody alone
IDLE_AFTER = 1.0  # seconds without a request after which a worker leaves the count and its thread sleeps
PER_PROCESS = 2  # admissions alone one process may hold per caller unknown to Redis (see the module's text)
PROCESS_MEMORY_MS = 5000  # a process that has not settled for this long (killed, or stalled) no longer counts
ALONE_FACTOR = 4  # a worker admits alone only under limits over 4 x its margin (under 2 x, Redis marks no caller hot)
MAX_HOT = 2000  # beyond this many hot callers, workers admit nobody alone: every request is checked in Redis
MAX_FULL = 10_000  # callers remembered as at their limit (refused without a round trip); beyond it, forgotten
MAX_PENDING = 100_000  # callers kept unsettled while Redis fails; beyond it, a failed batch is dropped

PREFIX = "ice-servers:{ratelimit}:"
HOT, SINCE, LAST, PREVIOUS = PREFIX + "hot", PREFIX + "since", PREFIX + "settled", PREFIX + "settled-before"
HANDED, LOW = PREFIX + "margin", PREFIX + "margin-low"
FIXED_KEYS = (HOT, SINCE, LAST, PREVIOUS, HANDED, LOW)

log = logging.getLogger("ice_servers")

# KEYS: hot (zset: counted key -> ms its mark lapses), since (zset: counted key -> ms it became hot), last and
#       previous (zsets: process -> ms of its last settlement, and of the one before), handed and low (zsets:
#       process -> the margin its last settlement handed it, and the smaller of its last two), then one list per
#       counted key (admission times, newest first, at most its limit).
# ARGV: mode ("check": admit now if under every limit; "settle": record admissions already made; "leave": this
#       process admits nobody alone until its next settlement), process, PER_PROCESS, PROCESS_MEMORY_MS, MAX_HOT,
#       ALONE_FACTOR, then per limit: its amount, window ms and how many of the counted keys that follow are its,
#       then per counted key the admissions to record.
# check returns 0, or the refusing key's 1-based index and the ms that caller surely stays refused (0: unknown);
# settle returns {margin, hot keys, or false when too many}.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hot, since, last, previous, handed, low = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local mode, process, per, alone_factor = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[6])
local function forget(member)
  for _, set in ipairs({last, previous, handed, low}) do redis.call('ZREM', set, member) end
end
if mode == 'leave' then
  forget(process)
  return 0
end
if mode == 'settle' then
  redis.call('ZADD', previous, redis.call('ZSCORE', last, process) or 0, process)
  redis.call('ZADD', last, now, process)
  local forgotten = redis.call('ZRANGEBYSCORE', last, '-inf', now - tonumber(ARGV[4]))
  for i = 1, #forgotten do forget(forgotten[i]) end
  local lapsed = redis.call('ZRANGEBYSCORE', hot, '-inf', now)
  for i = 1, #lapsed, 1000 do
    local chunk = {unpack(lapsed, i, math.min(i + 999, #lapsed))}
    redis.call('ZREM', hot, unpack(chunk))
    redis.call('ZREM', since, unpack(chunk))
  end
end
-- more than every process together may hold alone unknown here: within it of its limit, a caller is hot
local margin = per * (redis.call('ZCARD', last) + 1)
if mode == 'settle' then
  -- this process admits alone under this margin until its next settlement, and what it admitted under the one
  -- before may still be on its way: a check counts it under the smaller of the two
  local before = tonumber(redis.call('ZSCORE', handed, process)) or margin
  redis.call('ZADD', handed, margin, process)
  redis.call('ZADD', low, math.min(before, margin), process)
end

local function at_least(key, n, window)
  if n <= 0 then return true end
  local entry = redis.call('LINDEX', key, n - 1)
  return entry ~= false and tonumber(entry) > now - window
end

-- callers under limits this small are never marked hot: processes handed this margin admit nobody alone under them
local function can_be_hot(limit) return limit > 2 * margin end

-- processes that may hold admissions under this limit made alone (limit > ALONE_FACTOR x a margin they were handed)
local function alone(limit) return redis.call('ZCOUNT', low, '-inf', '(' .. (limit / alone_factor)) end

local function mark(key, window)
  if not redis.call('ZSCORE', since, key) then redis.call('ZADD', since, now, key) end
  redis.call('ZADD', hot, now + window, key)
end

local function record(key, limit, window, amount)
  local times, length = {}, 0
  for i = 1, math.min(amount, limit) do times[i] = now end
  for i = 1, #times, 1000 do length = redis.call('LPUSH', key, unpack(times, i, math.min(i + 999, #times))) end
  if length > limit then redis.call('LTRIM', key, 0, limit - 1) end
  redis.call('PEXPIRE', key, window)
  if can_be_hot(limit) and length >= limit - margin and at_least(key, limit - margin, window) then mark(key, window) end
end

-- each counted key's limit and window, from the groups in ARGV
local limits, windows, amounts = {}, {}, {}
local a, k = 7, 7
while k <= #KEYS do
  local limit, window, count = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  for i = k, k + count - 1 do limits[i], windows[i] = limit, window end
  a, k = a + 3, k + count
end
for i = 7, #KEYS do amounts[i] = tonumber(ARGV[a + i - 7]) end

if mode == 'check' then
  for i = 7, #KEYS do
    local key, limit, window = KEYS[i], limits[i], windows[i]
    if can_be_hot(limit) and at_least(key, limit - margin, window) then mark(key, window) end
    -- admissions alone may still be on their way from every process that may admit alone under this limit, unless
    -- it settled twice since the caller became hot (before, its hot list may not have had the caller)
    local unsure = alone(limit)
    if unsure > 0 then
      local became = redis.call('ZSCORE', since, key)
      if became then unsure = math.min(unsure, redis.call('ZCOUNT', previous, '-inf', became)) end
    end
    local room = limit - per * unsure
    if at_least(key, room, window) then
      -- full to the limit itself: nothing frees a slot before its oldest admission leaves the window
      local wait = 0
      if room == limit then wait = tonumber(redis.call('LINDEX', key, limit - 1)) + window - now end
      return {i - 6, wait}
    end
  end
end
for i = 7, #KEYS do
  record(KEYS[i], limits[i], windows[i], amounts[i])
end
if mode == 'check' then return 0 end
if redis.call('ZCARD', hot) > tonumber(ARGV[5]) then return {margin, false} end
return {margin, redis.call('ZRANGE', hot, 0, -1)}
"""


@dataclass(frozen=True)
class Limit:
    """One limit a caller is counted against: at most ``amount`` admissions in ``window_ms``."""

    amount: int
    window_ms: int

    def key(self, caller: str) -> str:
        """Return the list that counts ``caller`` against this limit."""
        return f"{PREFIX}count:{self.amount}/{self.window_ms}:{caller}"


class FleetCount:
    """Admit callers against limits counted in Redis for every worker and host, settling far-from-limit admissions in the background."""

    def __init__(self, client, limits: Sequence[Limit], clock: Callable[[], float] = time.monotonic):
        """Keep the client (the store's kind: one server, Sentinel's primary or a cluster); no call yet."""
        self.limits = tuple(limits)
        self._script = client.register_script(SCRIPT)
        self._clock = clock
        self._process = ""
        self._mutex = threading.Lock()
        self._wake = threading.Event()
        self._pending: list[dict[str, int]] = [{} for _ in self.limits]  # per limit: counted key -> admissions alone
        self._full: dict[str, tuple[int, float]] = {}  # caller -> (limit it is over, until when, this clock)
        self._hot: frozenset[str] | None = None  # None: too many hot callers, or never fetched
        self._margin = 0
        self._fresh_until = 0.0
        self._last_request = 0.0
        self._settler_pid = 0
        self._failing = False
        self._exiting = False
        self._gone = False  # left the count as the process exits: no call to Redis from here on
        self._turn = threading.RLock()  # one settlement or leave at a time, so none can land after the exit's leave
        self._spawn = daemon_spawner("ice-rate-settle")

    def admit(self, caller: str) -> int | None:
        """Count one request of ``caller``; return None to admit it, else the index of the limit it is over.

        Raises the client's errors when Redis must be asked and fails; the caller falls back.
        """
        keys = [limit.key(caller) for limit in self.limits]
        now = self._clock()
        self._last_request = now
        if self._settler_pid != os.getpid():
            self._start_settler()
        full = self._full.get(caller)
        if full is not None:
            if now < full[1]:
                return full[0]
            self._full.pop(caller, None)
        if self._alone(keys, now):
            return None
        args = self._head("check")
        for limit in self.limits:
            args += [limit.amount, limit.window_ms, 1]
        refused = self._script(keys=[*FIXED_KEYS, *keys], args=args + [1] * len(keys))
        self._wake.set()  # a caller checked in Redis: the settling thread runs again if it slept
        if not refused:
            return None
        index, wait_ms = int(refused[0]) - 1, int(refused[1])
        if wait_ms > 0:  # refused here, without a round trip, until a slot can be free (measured from before the call)
            if len(self._full) >= MAX_FULL:
                self._full.clear()
            self._full[caller] = (index, now + wait_ms / 1000)
        return index

    def _alone(self, keys: list[str], now: float) -> bool:
        """Admit without a round trip when every key is far from its limit, and note the admission; else False."""
        if any(limit.amount <= ALONE_FACTOR * self._margin for limit in self.limits):
            return False
        with self._mutex:
            hot, pending = self._hot, self._pending
            if hot is None or now >= self._fresh_until:
                return False
            for index, key in enumerate(keys):
                if key in hot or key in pending[index]:
                    return False
            for index, key in enumerate(keys):
                pending[index][key] = 1
        return True

    def _start_settler(self) -> None:
        """Start this process's settling thread (again after a fork)."""
        with self._mutex:
            if self._settler_pid == os.getpid():
                return
            self._settler_pid = os.getpid()
            self._process = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"  # one per worker (per instance in tests)
            self._pending, self._full, self._hot, self._fresh_until = [{} for _ in self.limits], {}, None, 0.0
        self._spawn(self._settle_forever)
        atexit.register(self._at_exit)

    def _settle_forever(self) -> None:
        """Settle every PERIOD while requests come; sleep until the next one after IDLE_AFTER without."""
        while True:
            if self._clock() - self._last_request > IDLE_AFTER:
                self._wake.clear()
                if self._leave():
                    self._wake.wait()
            started = self._clock()
            self.settle()
            time.sleep(max(0.0, PERIOD - (self._clock() - started)))

    def settle(self) -> None:
        """Record the admissions made alone in one script call, and fetch the hot callers; keep them on failure."""
        with self._turn:
            if not self._gone:
                self._settle()

    def _settle(self) -> None:
        started = self._clock()
        with self._mutex:
            batch, self._pending = self._pending, [{} for _ in self.limits]
        keys, args, amounts = list(FIXED_KEYS), self._head("settle"), []
        for limit, admitted in zip(self.limits, batch, strict=True):
            args += [limit.amount, limit.window_ms, len(admitted)]
            keys += admitted
            amounts += admitted.values()
        try:
            margin, hot = self._script(keys=keys, args=args + amounts)
        except Exception as exc:  # noqa: BLE001 (any failure: keep the admissions, admit nobody alone)
            with self._mutex:
                self._hot, self._fresh_until = None, 0.0
            self._keep(batch)
            if not self._failing and not self._exiting:
                log.warning(
                    "Rate limit settlement failed (%s): every request is checked in Redis, or in memory, meanwhile", type(exc).__name__
                )
            self._failing = True
            return
        if self._failing:
            log.info("Rate limit settlement works again")
        self._failing = False
        hot = None if hot is None else frozenset(key.decode() if isinstance(key, bytes) else key for key in hot)
        with self._mutex:  # None: too many hot callers to send, so nobody is admitted alone
            self._margin, self._hot, self._fresh_until = int(margin), hot, started + STALE_AFTER

    def _at_exit(self) -> None:
        """Settle what this worker admitted alone and leave the count as it stops (a reload); quietly, logging may be gone."""
        with self._turn:  # waits for a settlement in flight: landing after the leave, it would count this process again
            self._exiting = True
            self._leave() or self._leave()  # a request admitted alone during the first settles in the second
            self._gone = True

    def _leave(self) -> bool:
        """Settle what is left, then leave the count with nothing alone pending; False if admissions are left."""
        with self._turn:
            if self._gone:
                return True
            self._settle()
            with self._mutex:
                self._hot, self._fresh_until = None, 0.0  # admit nobody alone from here on
                if any(self._pending):
                    return False
            try:
                self._script(keys=FIXED_KEYS, args=self._head("leave"))
            except Exception:  # noqa: BLE001 (Redis forgets the process after PROCESS_MEMORY_MS anyway)
                pass
            return True

    def _head(self, mode: str) -> list:
        """Return the script's first arguments: the mode, this process and the settings every call shares."""
        return [mode, self._process, PER_PROCESS, PROCESS_MEMORY_MS, MAX_HOT, ALONE_FACTOR]

    def _keep(self, batch: list[dict[str, int]]) -> None:
        """Put an unsettled batch back, unless too many callers are waiting already."""
        with self._mutex:
            if sum(map(len, self._pending)) + sum(map(len, batch)) > MAX_PENDING:
                log.warning("Rate limit: %d unsettled admissions dropped while Redis fails", sum(sum(b.values()) for b in batch))
                return
            for pending, admitted in zip(self._pending, batch, strict=True):
                for key, amount in admitted.items():
                    pending[key] = pending.get(key, 0) + amount
