"""GCRA in Redis, for every worker of every host: one script call per request, one key per caller.

The script is gcra.step in Lua, atomic: concurrent requests of one caller are applied one after the
other, so they never pass more than sequential ones would. Time is Redis's (TIME), so the hosts'
clocks do not matter. A caller's key holds its TATs ("tat1,tat2" in ms) and expires when the last
has passed. Each key has its own hash tag, a digest of the caller, so a cluster spreads callers over
its slots (addresses and user ids appear only as a truncated SHA-256: out of sight, not secret); the rates' digest in the key name makes a
changed ICE_RATE_LIMIT start afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from app.config.rates import Rate

KEY_PREFIX = "ice-servers:rl:"

# KEYS: the caller's key. ARGV: per limit, its interval and its period, in ms.
# Returns 0 (passed), or {index of the limit with the longest wait (1-based), ms until every limit lets it pass}.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local count = #ARGV / 2
local held, tats = redis.call('GET', KEYS[1]), {}
if held then
  for value in string.gmatch(held, '[^,]+') do tats[#tats + 1] = tonumber(value) end
end
if #tats ~= count then tats = {} end
local new, ttl, refused, wait = {}, 1, 0, 0
for i = 1, count do
  local interval, period = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local tat = tats[i] or now
  if tat < now then tat = now end
  local due = (tat - now) + (interval - period)  -- in this order: exact for a new caller (see gcra.step)
  if due > wait then refused, wait = i, due end
  new[i] = string.format('%.3f', tat + interval)
  if tat + interval - now > ttl then ttl = tat + interval - now end
end
if refused > 0 then return {refused, string.format('%.3f', wait)} end
redis.call('SET', KEYS[1], table.concat(new, ','), 'PX', math.ceil(ttl))
return 0
"""


class SharedLimit:
    """GCRA counted in Redis for the whole fleet."""

    def __init__(self, client, rates: Sequence[Rate]):
        """Bind the script to ``client`` (any topology: one server, Sentinel, Cluster)."""
        self.rates = tuple(rates)
        self._script = client.register_script(SCRIPT)
        self._args = [value for rate in self.rates for value in (repr(rate.interval_ms), str(rate.period * 1000))]
        self._suffix = ":" + hashlib.sha256(",".join(self._args).encode()).hexdigest()[:8]

    def check(self, key: str) -> tuple[int | None, float]:
        """Count one request of ``key``; return (None, 0) to admit it, else (the refusing limit's index, ms to wait).

        Raises redis-py's errors: the caller decides what a failing Redis means.
        """
        result = self._script(keys=[caller_key(key) + self._suffix], args=self._args)
        if not result:
            return None, 0.0
        index, wait_ms = result
        return int(index) - 1, float(wait_ms)


def caller_key(key: str) -> str:
    """Return the Redis key of a caller: a digest under a hash tag of its own (spread over a cluster, never in clear)."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return f"{KEY_PREFIX}{{{digest}}}"
