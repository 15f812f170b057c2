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
- Keys used together share one hash tag (``ice-servers:{tag}:name``): a scope's entries and lock,
  or the fleet's cool-down and named values. Every key a script touches is in its KEYS and no
  command spans two tags, so the same calls run on one server, Sentinel and Cluster.
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
from redis.exceptions import RedisClusterException
from redis.sentinel import MasterNotFoundError

from app.ice import Credential
from app.numbers import parse_digits
from app.redis_connect import SOCKET_TIMEOUT, Connection
from app.redis_url import RedisTarget, parse_redis_url

KEY_PREFIX = "ice-servers:"
SHARED_TAG = "shared"  # the hash tag of the shared credential's keys
FLEET_TAG = "fleet"  # the hash tag of what every scope shares: the cool-down, named values
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

    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.time, scope: str = "", _scripts=None, connection=None):
        """Use ``client``; ``clock`` turns absolute expiries into Redis PX values; ``scope`` names the credential."""
        self._redis = client
        self._clock = clock
        self.connection: Connection | None = connection
        self._put_if_newer, self._release_if_owner = _scripts or (
            client.register_script(_PUT_IF_NEWER),
            client.register_script(_RELEASE_IF_OWNER),
        )
        self._keys = {name: store_key(name, scope) for name in ("credential", "credential:last", "lock")}
        self._keys.update({name: store_key(name, None) for name in ("cooldown", "failures")})

    def scoped(self, scope: str) -> RedisStore:
        """Return the store of another credential: its own entries and lock, the shared cool-down."""
        return RedisStore(self._redis, self._clock, scope, (self._put_if_newer, self._release_if_owner), self.connection)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """Connect lazily to ``url`` (REDIS_URL's grammar) with sub-second timeouts."""
        return cls.from_target(parse_redis_url(url))

    @classmethod
    def from_target(cls, target: RedisTarget) -> RedisStore:
        """Connect lazily to the parsed REDIS_URL: one server, a socket, Sentinel or Cluster."""
        connection = Connection(target)
        return cls(connection.client, connection=connection)

    def describe(self) -> str:
        """Name the topology and its state (the primary behind Sentinel, the cluster's state)."""
        return self.connection.describe() if self.connection is not None else "single: a client given by the caller"

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
        except redis.ResponseError as exc:
            if _wrong_type(exc):  # someone wrote another type there: a miss
                return None
            raise StoreUnavailable(_describe(exc)) from None
        except (redis.RedisError, RedisClusterException) as exc:
            raise StoreUnavailable(_describe(exc)) from None

    def snapshot(self) -> Snapshot:
        """Read the fresh and last credentials, the cool-down and the failure count in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._keys["credential"])
        pipe.get(self._keys["credential:last"])
        pipe.pttl(self._keys["cooldown"])
        pipe.get(self._keys["failures"])
        # raise_on_error=False leaves a WRONGTYPE error in its slot (a miss); I/O errors still raise.
        fresh, last, cooldown_ms, failures = results = self._call(pipe.execute, raise_on_error=False)
        for result in results:
            if isinstance(result, Exception) and not _wrong_type(result):  # NOPERM, READONLY...: not a miss
                raise StoreUnavailable(_describe(result))
        return Snapshot(
            fresh=_parse(fresh),
            last=_parse(last),
            cooldown=max(0, cooldown_ms) / 1000 if isinstance(cooldown_ms, int) else 0.0,
            failures=parse_digits(failures) or 0,
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
        value = self._call(self._redis.get, store_key(name, None))
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else None

    def write(self, name: str, value: str, ttl: float) -> None:
        """Store ``value`` under ``name`` for ``ttl`` seconds."""
        self._call(self._redis.set, store_key(name, None), value, px=max(1, int(ttl * 1000)))

    def claim(self, name: str, ttl: float) -> bool:
        """Set ``name`` for ``ttl`` seconds unless it is set; tell whether this call set it."""
        return bool(self._call(self._redis.set, store_key(name, None), "1", nx=True, px=max(1, int(ttl * 1000))))

    def _call(self, function, *args, **kwargs):
        """Run one Redis call, turning its failures into StoreUnavailable."""
        try:
            return function(*args, **kwargs)
        except (redis.RedisError, RedisClusterException) as exc:
            raise StoreUnavailable(_describe(exc)) from None


def store_key(name: str, scope: str | None = "") -> str:
    """Return the Redis key of ``name`` in ``scope`` ("": the shared credential; None: the fleet's keys)."""
    tag = FLEET_TAG if scope is None else scope or SHARED_TAG
    return f"{KEY_PREFIX}{{{tag}}}:{name}"


def _wrong_type(exc: Exception) -> bool:
    """Tell whether a command failed because a key holds another type (junk: a miss, not a failure)."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("WRONGTYPE")


def _parse(raw: object) -> Credential | None:
    """Parse a GET result; an error in its place (WRONGTYPE) or junk is a miss."""
    return Credential.from_json(raw) if isinstance(raw, bytes | str) else None


def _describe(exc: Exception) -> str:
    """Describe a Redis failure in one line, naming the cause, without the URL or its password."""
    text = str(exc).lower()
    if isinstance(exc, redis.TimeoutError):
        return f"Redis did not answer within {SOCKET_TIMEOUT:g} s"
    if isinstance(exc, redis.AuthenticationError) or "wrongpass" in text or "noauth" in text:
        return "Redis refused the user or password in REDIS_URL (authentication)"
    if "certificate verify failed" in text or "certificate_verify_failed" in text:
        return "Redis's TLS certificate did not verify (check REDIS_CA_FILE and the host name in REDIS_URL)"
    if "ssl" in text or "tls" in text or "wrong version number" in text:
        return "the TLS handshake with Redis failed (rediss:// against a TLS port?)"
    if isinstance(exc, redis.ReadOnlyError):
        return "Redis answered READONLY: the primary was demoted (a failover)"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return "Redis refused a command to the user in REDIS_URL (NOPERM: see the README's ACL line)"
    if isinstance(exc, MasterNotFoundError):
        return "no Sentinel knows the primary of the service in REDIS_URL (a failover in progress?)"
    if isinstance(exc, redis.ConnectionError):
        return "could not connect to Redis"
    if isinstance(exc, redis.exceptions.ClusterDownError | redis.exceptions.TryAgainError | RedisClusterException):
        return f"the Redis cluster is not serving ({type(exc).__name__})"
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

    def describe(self) -> str:
        """Name the store."""
        return "in-process: each worker holds its own (REDIS_URL is not set)"

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
