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
from app.store.connect import SOCKET_TIMEOUT, Connection, timeouts
from app.store.memory import MemoryStore

KEY_PREFIX = "ice-servers:"

SHARED_TAG = "shared"  # the hash tag of the shared credential's keys

FLEET_TAG = "fleet"  # the hash tag of what every scope shares: the cool-down, named values

FAILURES_MEMORY = 3600  # seconds a run of upstream failures is remembered, for the backoff exponent

# KEYS: the scope's record. ARGV: the entry, its issuedAt, its expiresAt, its PX, its TURN username. Records are ordered
# by when they were issued (app/core/ice.py's keeps_place says the same in Python): a late writer never replaces a
# credential issued after its own, a shorter grant issued later replaces an older, longer one, and a tombstone wins a tie
# (the revoked credential, put back by a worker's copy, was issued exactly then). A tombstone written before this order
# (no issuedAt) keeps out its own credential only, by username: compared by expiry, it would refuse every shorter grant
# after a lowered TURN_CREDENTIAL_TTL. A key of another type, or junk, is replaced.
_PUT_IF_NEWER = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'string' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
local current = redis.call('GET', KEYS[1])
if current then
  local ok, entry = pcall(cjson.decode, current)
  if ok and type(entry) == 'table' then
    local held, new = tonumber(entry['issuedAt']), tonumber(ARGV[2])
    if held and (held > new or (held == new and entry['revoked'] ~= nil)) then return 0 end
    local expires = tonumber(entry['expiresAt'])
    local finite = expires and expires == expires and expires > -math.huge and expires < math.huge
    if not held and finite and entry['revoked'] ~= nil and entry['revoked'] == ARGV[5] then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
return 1
"""

# KEYS: the cool-down, the failure count. ARGV: the cool-down's PX, the count's memory in seconds. One call, so a Redis
# that hangs costs one socket timeout (a cluster pipeline re-sends each failed command once more on its own).
_START_COOLDOWN = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('INCRBY', KEYS[2], 1)
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: the fleet's counts of users admitted, one per hour, the current hour first (one hash tag). ARGV: the bound, the
# seconds a count lives (the credential's life and an hour). A user is admitted while fewer than the bound were admitted
# within the credential's life: a record lives no longer than its credential, so that many records at most are alive.
_ADMIT_USER = """
local admitted = 0
for i = 1, #KEYS do admitted = admitted + (tonumber(redis.call('GET', KEYS[i])) or 0) end
if admitted >= tonumber(ARGV[1]) then return 0 end
redis.call('INCRBY', KEYS[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
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
        # What a timeout took, for the messages: the connect's and a command's (longer serverless).
        self._timeouts = timeouts(connection.target) if connection is not None else (SOCKET_TIMEOUT, SOCKET_TIMEOUT)
        scripts = (_PUT_IF_NEWER, _RELEASE_IF_OWNER, _START_COOLDOWN, _ADMIT_USER)
        self._scripts = _scripts or tuple(client.register_script(script) for script in scripts)
        self._put_if_newer, self._release_if_owner, self._start_cooldown, self._admit_user = self._scripts
        # A cluster pipeline re-sends each command that timed out, one by one: on a cluster the snapshot reads one by one.
        self._one_by_one = connection is not None and connection.target.topology == "cluster"
        self._keys = {name: store_key(name, scope) for name in ("credential", "lock")}
        self._keys.update({name: store_key(name, None) for name in ("cooldown", "failures")})

    def scoped(self, scope: str) -> RedisStore:
        """Return the store of another scope: its own record and lock, the shared cool-down."""
        return RedisStore(self._redis, self._clock, scope, self._scripts, self.connection)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """Connect lazily to ``url`` (REDIS_URL's grammar) with sub-second timeouts."""
        return cls.from_target(parse_redis_url(url))

    @classmethod
    def from_target(cls, target: RedisTarget) -> RedisStore:
        """Connect lazily to the parsed REDIS_URL: one server, a socket, Sentinel or Cluster."""
        connection = Connection(target)
        return cls(connection.client, connection=connection)

    def describe(self, ask: bool = True) -> str:
        """Name the topology and its state (the primary behind Sentinel, the cluster's state; ``ask``: from Redis, else as configured)."""
        return self.connection.describe(ask) if self.connection is not None else "single: a client given by the caller"

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
        """Read the record, the cool-down and the failure count in one round trip (one by one on a cluster)."""
        if self._one_by_one:
            results = [self._call(_or_error, call, *args) for call, args in self._reads()]
        else:
            pipe = self._redis.pipeline(transaction=False)
            for call, args in self._reads(pipe):
                call(*args)
            # raise_on_error=False leaves a WRONGTYPE error in its slot (a miss); I/O errors still raise.
            results = self._call(pipe.execute, raise_on_error=False)
        raw, cooldown_ms, failures = results
        for result in results:
            if isinstance(result, Exception) and not _wrong_type(result):  # NOPERM, READONLY...: not a miss
                raise StoreUnavailable(_describe(result, self._timeouts), answered=isinstance(result, redis.ResponseError))
        record = parse_record(raw) if isinstance(raw, bytes | str) else None
        return Snapshot(
            credential=record if isinstance(record, Credential) else None,
            revoked=record if isinstance(record, Revoked) else None,
            cooldown=max(0, cooldown_ms) / 1000 if isinstance(cooldown_ms, int) else 0.0,
            failures=(parse_digits(failures) or 0) if isinstance(failures, bytes) else 0,
        )

    def _reads(self, client=None):
        """Return the snapshot's three reads, as (call, args), on ``client`` (a pipeline) or the client."""
        client = client or self._redis
        return [
            (client.get, (self._keys["credential"],)),
            (client.pttl, (self._keys["cooldown"],)),
            (client.get, (self._keys["failures"],)),
        ]

    def put(self, credential: Credential) -> bool:
        """Store ``credential`` unless the record was issued later (or is its tombstone); tell whether it was stored."""
        return self._write(credential.to_json(), credential)

    def revoke(self, credential: Credential) -> None:
        """Leave a tombstone in the place of ``credential`` (unless one issued later is there): it is never served or put back."""
        self._write(Revoked(credential.username or "", credential.expires_at, credential.issued_at).to_json(), credential)

    def _write(self, entry: str, credential: Credential) -> bool:
        """Run the put-if-newer script for ``credential``'s record; an entry already expired is not written."""
        ttl_ms = int((credential.expires_at - self._clock()) * 1000)
        if ttl_ms <= 0:
            return False
        args = [entry, repr(credential.issued_at), repr(credential.expires_at), ttl_ms, credential.username or ""]
        return bool(self._call(self._put_if_newer, keys=[self._keys["credential"]], args=args))

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
        keys = [self._keys["cooldown"], self._keys["failures"]]
        self._call(self._start_cooldown, keys=keys, args=[max(1, int(seconds * 1000)), FAILURES_MEMORY])

    def admit_user(self, bound: int, life: float) -> bool:
        """Count one more user mint unless ``bound`` were counted within ``life`` seconds (and one bucket); tell which.

        Buckets of an eighth of ``life`` (a minute to an hour), on this host's clock: hosts minutes apart count at
        bucket edges a little differently (keep their clocks in sync, as TLS and the credentials' expiry want anyway).
        """
        bucket = int(max(60, min(3600, life // 8)))
        index = int(self._clock() // bucket)
        keys = [store_key(f"users:{bucket}:{index - back}", None) for back in range(int(-(-life // bucket)) + 1)]
        return bool(self._call(self._admit_user, keys=keys, args=[bound, int(life) + bucket]))

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
        """Run one Redis call, turning its failures into StoreUnavailable (``answered``: Redis refused it, it is there)."""
        try:
            return function(*args, **kwargs)
        except (redis.RedisError, RedisClusterException) as exc:
            raise StoreUnavailable(_describe(exc, self._timeouts), answered=answered(exc)) from None


def _or_error(call, *args):
    """Run one read; a key of another type is its WRONGTYPE error in its slot, as in a pipeline without raise_on_error."""
    try:
        return call(*args)
    except redis.ResponseError as exc:
        if _wrong_type(exc):
            return exc
        raise


def store_key(name: str, scope: str | None = "") -> str:
    """Return the Redis key of ``name`` in ``scope`` ("": the shared credential; None: the fleet's keys)."""
    tag = FLEET_TAG if scope is None else scope or SHARED_TAG
    return f"{KEY_PREFIX}{{{tag}}}:{name}"


def answered(exc: Exception) -> bool:
    """Tell whether a Redis error is an answer (NOPERM, OOM, READONLY, a script's error), not a Redis that is away."""
    return isinstance(exc, redis.ResponseError) and not isinstance(exc, redis.exceptions.ClusterError | redis.exceptions.TryAgainError)


def _wrong_type(exc: Exception) -> bool:
    """Tell whether a command failed because a key holds another type (junk: a miss, not a failure)."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("WRONGTYPE")


def _describe(exc: Exception, timeouts: tuple[float, float] = (SOCKET_TIMEOUT, SOCKET_TIMEOUT)) -> str:
    """Describe a Redis failure in one line, naming the cause, without the URL or its password.

    ``timeouts``: the connect's and a command's, in force for the connection that failed.
    """
    text = str(exc).lower()
    if isinstance(exc, redis.TimeoutError):
        connect, command = timeouts
        if text.startswith("timeout connecting") and connect != command:  # redis-py's text; TLS is part of its connect
            return f"Redis did not answer within {connect:g} s to connect ({command:g} s for the TLS handshake)"
        return f"Redis did not answer within {command:g} s"
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
