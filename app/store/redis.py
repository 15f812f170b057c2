"""The shared cache in Redis: a scope's one record, its refill lock, and the upstream cool-down, for every worker of every host.

The contract it shares with MemoryStore is app/store/__init__.py's. Keys used together share one hash
tag (``ice-servers:{tag}:name``): a scope's record and lock, or the fleet's cool-down and named
values; every key a script touches is in its KEYS, so the same calls run on one server, Sentinel
and Cluster.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import redis
from redis.exceptions import RedisClusterException
from redis.sentinel import MasterNotFoundError

from app.config.redis_url import RedisTarget, parse_redis_url
from app.core.errors import StoreUnavailable
from app.core.ice import Credential, Revoked, parse_record
from app.core.numbers import parse_digits
from app.core.ports import Snapshot
from app.store.connect import SOCKET_TIMEOUT, Connection
from app.store.memory import MemoryStore

KEY_PREFIX = "ice-servers:"

SHARED_TAG = "shared"  # the hash tag of the shared credential's keys

FLEET_TAG = "fleet"  # the hash tag of what every scope shares: the cool-down, named values

FAILURES_MEMORY = 3600  # seconds a run of upstream failures is remembered, for the backoff exponent

# KEYS: the scope's record. ARGV: the entry, its expiresAt, its PX, "put" or "revoke". A record expiring later wins
# (a late writer never replaces a newer credential); a tombstone also wins a tie (the revoked credential, put back by a
# worker's copy, expires exactly as late), and a revoke wins a tie over the credential it revokes. A key of another
# type is replaced.
_PUT_IF_NEWER = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'string' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
local current = redis.call('GET', KEYS[1])
if current then
  local ok, entry = pcall(cjson.decode, current)
  local held = ok and type(entry) == 'table' and tonumber(entry['expiresAt'])
  if held and (held > tonumber(ARGV[2]) or (held == tonumber(ARGV[2]) and entry['revoked'] ~= nil)) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""

_RELEASE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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
        self._keys = {name: store_key(name, scope) for name in ("credential", "lock")}
        self._keys.update({name: store_key(name, None) for name in ("cooldown", "failures")})

    def scoped(self, scope: str) -> RedisStore:
        """Return the store of another scope: its own record and lock, the shared cool-down."""
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

    def fallback(self) -> MemoryStore:
        """Return a store of this process's own, for while Redis fails."""
        return MemoryStore(self._clock)

    def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        self._call(self._redis.ping)

    def get(self) -> Credential | None:
        """Return the scope's credential (whatever its window), or None."""
        return self.snapshot().credential

    def snapshot(self) -> Snapshot:
        """Read the record, the cool-down and the failure count in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._keys["credential"])
        pipe.pttl(self._keys["cooldown"])
        pipe.get(self._keys["failures"])
        # raise_on_error=False leaves a WRONGTYPE error in its slot (a miss); I/O errors still raise.
        raw, cooldown_ms, failures = results = self._call(pipe.execute, raise_on_error=False)
        for result in results:
            if isinstance(result, Exception) and not _wrong_type(result):  # NOPERM, READONLY...: not a miss
                raise StoreUnavailable(_describe(result))
        record = parse_record(raw) if isinstance(raw, bytes | str) else None
        return Snapshot(
            credential=record if isinstance(record, Credential) else None,
            revoked=record if isinstance(record, Revoked) else None,
            cooldown=max(0, cooldown_ms) / 1000 if isinstance(cooldown_ms, int) else 0.0,
            failures=(parse_digits(failures) or 0) if isinstance(failures, bytes) else 0,
        )

    def put(self, credential: Credential) -> bool:
        """Store ``credential`` unless the record expires later (or is its tombstone); tell whether it was stored."""
        return self._write(credential.to_json(), credential.expires_at, "put")

    def revoke(self, credential: Credential) -> None:
        """Leave a tombstone in the place of ``credential`` (unless a newer one is there): it is never served or put back."""
        self._write(Revoked(credential.username or "", credential.expires_at).to_json(), credential.expires_at, "revoke")

    def _write(self, entry: str, expires_at: float, mode: str) -> bool:
        """Run the put-if-newer script; an entry already expired is not written."""
        ttl_ms = int((expires_at - self._clock()) * 1000)
        if ttl_ms <= 0:
            return False
        return bool(self._call(self._put_if_newer, keys=[self._keys["credential"]], args=[entry, repr(expires_at), ttl_ms, mode]))

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
        return "Redis refused a command to the user in REDIS_URL (NOPERM: see the ACL line in docs/fleet-and-redis.md)"
    if isinstance(exc, MasterNotFoundError):
        return "no Sentinel knows the primary of the service in REDIS_URL (a failover in progress?)"
    if isinstance(exc, redis.ConnectionError):
        return "could not connect to Redis"
    if isinstance(exc, redis.exceptions.ClusterDownError | redis.exceptions.TryAgainError | RedisClusterException):
        return f"the Redis cluster is not serving ({type(exc).__name__})"
    return f"Redis failed ({type(exc).__name__})"
