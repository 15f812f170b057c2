"""The shared cache: the credential, the refill lock and the upstream cool-down.

``RedisStore`` is shared by every worker of every host; ``MemoryStore`` keeps the same contract
inside one process (no ``REDIS_URL``, or while Redis is down). The contract, for both:

- ``get`` returns the credential inside its cache window, or None on a miss. An entry that does
  not parse, lacks a field or has the wrong Redis type is a miss, never an error.
- ``snapshot`` returns, in one round trip, what a refill decides on: the fresh credential, the
  last one whatever its window (for stale-if-error), the cool-down left and the failure count.
  Callers still check ``is_valid`` on ``last``: an entry never outlives its credential, but
  clocks drift.
- ``put`` stores a credential unless one expiring later is already held (a late writer never
  replaces a newer credential), in one atomic step.
- ``acquire_lock`` returns a token or None; the lock expires by itself so that a dead holder
  cannot block the fleet; ``release_lock`` deletes it only if the token still matches.
- Any I/O failure raises ``StoreUnavailable``; nothing else leaves these methods.
- ``read``, ``write`` and ``claim`` keep small named values beside the credentials (the fleet's
  TURN usage reading, and who asks for the next one): ``claim`` sets a name only if it is unset,
  for ``ttl`` seconds, and tells whether it did.
- ``scoped(scope)`` returns the same contract for another credential (one per user): its own
  entries and lock, the same cool-down, since the upstream fails for everyone at once. Entries
  of every scope expire with their credential, so the cache stays as large as its active users.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.ice import Credential

SOCKET_TIMEOUT = 0.5  # seconds; a slow Redis must not hold a request longer than the upstream would
KEY_PREFIX = "ice-servers:"
FAILURES_MEMORY = 3600  # seconds a run of upstream failures is remembered, for the backoff exponent
SCOPES_PRUNE_AT = 1024  # in-process scopes held before those with an expired credential are dropped

# KEYS: fresh, last. ARGV: entry, expires_at, fresh ms, last ms. Wrong-type keys are replaced.
_PUT_IF_NEWER = """
for i = 1, 2 do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'string' and kind ~= 'none' then redis.call('DEL', KEYS[i]) end
end
local current = redis.call('GET', KEYS[2])
if current then
  local ok, entry = pcall(cjson.decode, current)
  if ok and type(entry) == 'table' and tonumber(entry['expiresAt'])
     and tonumber(entry['expiresAt']) > tonumber(ARGV[2]) then
    return 0
  end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[4])
return 1
"""

_RELEASE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class StoreUnavailable(Exception):
    """The shared cache did not answer in time."""


@dataclass(frozen=True)
class Snapshot:
    """What the store holds, read at once: the refill decides on all of it together."""

    fresh: Credential | None  # inside its cache window
    last: Credential | None  # the newest stored, whatever its window
    cooldown: float  # seconds left of the upstream cool-down (0: none)
    failures: int  # upstream failures in a row


class RedisStore:
    """The shared cache in Redis, with short socket timeouts and no retry storms."""

    shared = True

    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.time, scope: str = "", _scripts=None):
        """Use ``client``; ``clock`` turns absolute expiries into Redis PX values; ``scope`` names the credential."""
        self._redis = client
        self._clock = clock
        self._put_if_newer, self._release_if_owner = _scripts or (
            client.register_script(_PUT_IF_NEWER),
            client.register_script(_RELEASE_IF_OWNER),
        )
        entry = KEY_PREFIX + (f"{scope}:" if scope else "")
        self._keys = {name: entry + name for name in ("credential", "credential:last", "lock")}
        self._keys.update({name: KEY_PREFIX + name for name in ("cooldown", "failures")})

    def scoped(self, scope: str) -> RedisStore:
        """Return the store of another credential: its own entries and lock, the shared cool-down."""
        return RedisStore(self._redis, self._clock, scope, (self._put_if_newer, self._release_if_owner))

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """Connect lazily to ``url`` with sub-second timeouts and one immediate reconnect."""
        client = redis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client)

    def __repr__(self) -> str:
        """Name the store without the URL, which may carry a password."""
        return "RedisStore()"

    def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        self._call(self._redis.ping)

    def get(self) -> Credential | None:
        """Return the credential inside its cache window, or None."""
        try:
            return _parse(self._redis.get(self._keys["credential"]))
        except redis.ResponseError:  # WRONGTYPE: someone wrote another type there
            return None
        except redis.RedisError as exc:
            raise StoreUnavailable(_describe(exc)) from None

    def snapshot(self) -> Snapshot:
        """Read the fresh and last credentials, the cool-down and the failure count in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._keys["credential"])
        pipe.get(self._keys["credential:last"])
        pipe.pttl(self._keys["cooldown"])
        pipe.get(self._keys["failures"])
        # raise_on_error=False leaves a WRONGTYPE error in its slot (a miss); I/O errors still raise.
        fresh, last, cooldown_ms, failures = self._call(pipe.execute, raise_on_error=False)
        return Snapshot(
            fresh=_parse(fresh),
            last=_parse(last),
            cooldown=max(0, cooldown_ms) / 1000 if isinstance(cooldown_ms, int) else 0.0,
            failures=int(failures) if isinstance(failures, bytes) and failures.isdigit() else 0,
        )

    def put(self, credential: Credential) -> bool:
        """Store ``credential`` unless a later-expiring one is held; tell whether it was stored."""
        now = self._clock()
        fresh_ms = int((min(credential.refresh_at, credential.expires_at) - now) * 1000)
        last_ms = int((credential.expires_at - now) * 1000)
        if last_ms <= 0:
            return False
        keys = [self._keys["credential"], self._keys["credential:last"]]
        args = [credential.to_json(), repr(credential.expires_at), max(fresh_ms, 0), last_ms]
        return bool(self._call(self._put_if_newer, keys=keys, args=args))

    def acquire_lock(self, ttl: float) -> str | None:
        """Take the refill lock for ``ttl`` seconds; return its token, or None if it is held."""
        token = secrets.token_hex(16)
        taken = self._call(self._redis.set, self._keys["lock"], token, nx=True, px=int(ttl * 1000))
        return token if taken else None

    def release_lock(self, token: str) -> None:
        """Release the lock if ``token`` still owns it (it may have expired and passed on)."""
        self._call(self._release_if_owner, keys=[self._keys["lock"]], args=[token])

    def start_cooldown(self, seconds: float) -> None:
        """Start a cool-down of ``seconds`` and count one more failure in a row."""
        pipe = self._redis.pipeline()
        pipe.set(self._keys["cooldown"], "1", px=max(1, int(seconds * 1000)))
        pipe.incr(self._keys["failures"])
        pipe.expire(self._keys["failures"], FAILURES_MEMORY)
        self._call(pipe.execute)

    def clear_failures(self) -> None:
        """Forget the failure run after a success."""
        self._call(self._redis.delete, self._keys["cooldown"], self._keys["failures"])

    def read(self, name: str) -> str | None:
        """Return the value stored under ``name``, or None."""
        value = self._call(self._redis.get, KEY_PREFIX + name)
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else None

    def write(self, name: str, value: str, ttl: float) -> None:
        """Store ``value`` under ``name`` for ``ttl`` seconds."""
        self._call(self._redis.set, KEY_PREFIX + name, value, px=max(1, int(ttl * 1000)))

    def claim(self, name: str, ttl: float) -> bool:
        """Set ``name`` for ``ttl`` seconds unless it is set; tell whether this call set it."""
        return bool(self._call(self._redis.set, KEY_PREFIX + name, "1", nx=True, px=max(1, int(ttl * 1000))))

    def _call(self, function, *args, **kwargs):
        """Run one Redis call, turning its failures into StoreUnavailable."""
        try:
            return function(*args, **kwargs)
        except redis.RedisError as exc:
            raise StoreUnavailable(_describe(exc)) from None


def _parse(raw: object) -> Credential | None:
    """Parse a GET result; an error in its place (WRONGTYPE) or junk is a miss."""
    return Credential.from_json(raw) if isinstance(raw, bytes | str) else None


def _describe(exc: Exception) -> str:
    """Describe a Redis failure in one line without the URL or its password."""
    if isinstance(exc, redis.TimeoutError):
        return f"Redis did not answer within {SOCKET_TIMEOUT:g} s"
    if isinstance(exc, redis.AuthenticationError):
        return "Redis refused the password in REDIS_URL"
    if isinstance(exc, redis.ConnectionError):
        return "could not connect to Redis"
    return f"Redis failed ({type(exc).__name__})"


class MemoryStore:
    """The same contract inside one process: for no ``REDIS_URL``, and while Redis is down."""

    shared = False

    def __init__(self, clock: Callable[[], float] = time.time, _upstream: _Upstream | None = None):
        """Start empty; ``clock`` is injectable for expiry tests."""
        self._clock = clock
        self._mutex = threading.Lock()
        self._last: Credential | None = None
        self._lock: tuple[str, float] | None = None
        self._upstream = _upstream or _Upstream()

    def scoped(self, scope: str) -> MemoryStore:
        """Return the store of another credential (the same one for the same scope); it shares this one's cool-down."""
        with self._upstream.mutex:
            scopes = self._upstream.scopes
            store = scopes.get(scope)
            if store is None:
                if len(scopes) >= self._upstream.prune_above:  # drop the scopes whose credential expired
                    now = self._clock()
                    for name in [name for name, held in scopes.items() if not (held._last and held._last.is_valid(now))]:
                        del scopes[name]
                    self._upstream.prune_above = max(SCOPES_PRUNE_AT, 2 * len(scopes))
                store = scopes[scope] = MemoryStore(self._clock, self._upstream)
            return store

    def __repr__(self) -> str:
        """Name the store."""
        return "MemoryStore()"

    def ping(self) -> None:
        """Answer always: the process is alive."""

    def get(self) -> Credential | None:
        """Return the credential inside its cache window, or None."""
        credential = self._last
        return credential if credential and credential.is_fresh(self._clock()) else None

    def snapshot(self) -> Snapshot:
        """Return the fresh and last (while valid) credentials, the cool-down and the failure count."""
        now, last = self._clock(), self._last
        return Snapshot(
            fresh=last if last and last.is_fresh(now) else None,
            last=last if last and last.is_valid(now) else None,
            cooldown=max(0.0, self._upstream.cooldown_until - now),
            failures=self._upstream.failures,
        )

    def put(self, credential: Credential) -> bool:
        """Store ``credential`` unless a later-expiring one is held."""
        with self._mutex:
            if self._last and self._last.expires_at > credential.expires_at:
                return False
            self._last = credential
            return True

    def acquire_lock(self, ttl: float) -> str | None:
        """Take the lock for ``ttl`` seconds; return its token, or None if it is held."""
        with self._mutex:
            now = self._clock()
            if self._lock and self._lock[1] > now:
                return None
            token = secrets.token_hex(16)
            self._lock = (token, now + ttl)
            return token

    def release_lock(self, token: str) -> None:
        """Release the lock if ``token`` still owns it."""
        with self._mutex:
            if self._lock and self._lock[0] == token:
                self._lock = None

    def start_cooldown(self, seconds: float) -> None:
        """Start a cool-down of ``seconds`` and count one more failure in a row."""
        with self._upstream.mutex:
            self._upstream.cooldown_until = self._clock() + seconds
            self._upstream.failures += 1

    def clear_failures(self) -> None:
        """Forget the failure run after a success."""
        with self._upstream.mutex:
            self._upstream.cooldown_until = 0.0
            self._upstream.failures = 0

    def read(self, name: str) -> str | None:
        """Return the value stored under ``name`` while it lives, or None."""
        value, until = self._upstream.values.get(name, (None, 0.0))
        return value if until > self._clock() else None

    def write(self, name: str, value: str, ttl: float) -> None:
        """Store ``value`` under ``name`` for ``ttl`` seconds."""
        with self._upstream.mutex:
            self._upstream.values[name] = (value, self._clock() + ttl)

    def claim(self, name: str, ttl: float) -> bool:
        """Set ``name`` for ``ttl`` seconds unless it is set; tell whether this call set it."""
        with self._upstream.mutex:
            now = self._clock()
            if self._upstream.values.get(name, (None, 0.0))[1] > now:
                return False
            self._upstream.values[name] = ("1", now + ttl)
            return True


class _Upstream:
    """What the scopes of one MemoryStore share: the cool-down, the scopes themselves, named values."""

    def __init__(self):
        """Start with no cool-down and no scope."""
        self.mutex = threading.Lock()
        self.cooldown_until = 0.0
        self.failures = 0
        self.scopes: dict[str, MemoryStore] = {}  # only as many as users with a valid credential
        self.values: dict[str, tuple[str, float]] = {}  # name -> (value, until): a few fixed names
        self.prune_above = SCOPES_PRUNE_AT
