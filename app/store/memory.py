"""The shared cache's contract inside one process: for no REDIS_URL, and while Redis is down."""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

from app.core.ice import Credential, Revoked, keeps_place
from app.core.ports import Snapshot

SCOPES_PRUNE_AT = 1024  # in-process scopes held before those whose record expired are dropped


class MemoryStore:
    """The contract of app/store/__init__.py inside one process."""

    shared = False

    def __init__(self, clock: Callable[[], float] = time.time, _upstream: _Upstream | None = None):
        """Start empty; ``clock`` is injectable for expiry tests."""
        self._clock = clock
        self._mutex = threading.Lock()
        self._record: Credential | Revoked | None = None
        self._lock: tuple[str, float] | None = None
        self._upstream = _upstream or _Upstream()

    def scoped(self, scope: str) -> MemoryStore:
        """Return the store of another scope (the same one for the same scope); it shares this one's cool-down."""
        with self._upstream.mutex:
            scopes = self._upstream.scopes
            store = scopes.get(scope)
            if store is None:
                if len(scopes) >= self._upstream.prune_above:  # drop the scopes whose record expired
                    now = self._clock()
                    for name in [name for name, held in scopes.items() if held._held(now) is None]:
                        del scopes[name]
                    self._upstream.prune_above = max(SCOPES_PRUNE_AT, 2 * len(scopes))
                store = scopes[scope] = MemoryStore(self._clock, self._upstream)
            return store

    def __repr__(self) -> str:
        """Name the store."""
        return "MemoryStore()"

    def describe(self, ask: bool = True) -> str:
        """Name the store."""
        return "in-process: each worker holds its own (REDIS_URL is not set)"

    def fallback(self) -> MemoryStore:
        """Return another store of this process's own (for a subclass that plays a shared one, in tests)."""
        return MemoryStore(self._clock)

    def ping(self) -> None:
        """Answer always: the process is alive."""

    def get(self) -> Credential | None:
        """Return the scope's credential (whatever its window), or None."""
        return self.snapshot().credential

    def snapshot(self) -> Snapshot:
        """Return the record while it lives, the cool-down and the failure count."""
        now = self._clock()
        record = self._held(now)
        return Snapshot(
            credential=record if isinstance(record, Credential) else None,
            revoked=record if isinstance(record, Revoked) else None,
            cooldown=max(0.0, self._upstream.cooldown_until - now),
            failures=self._upstream.failures,
        )

    def put(self, credential: Credential) -> bool:
        """Store ``credential`` unless the record was issued later, or is the tombstone of one issued as late (ice.keeps_place)."""
        with self._mutex:
            held = self._held(self._clock())
            if held is not None and keeps_place(held, credential):
                return False
            self._record = credential
            return True

    def revoke(self, credential: Credential) -> None:
        """Leave a tombstone in the place of ``credential``, unless one issued later is there."""
        with self._mutex:
            held = self._held(self._clock())
            if held is None or not keeps_place(held, credential):  # what put-if-newer decides for the tombstone in Redis
                self._record = Revoked(credential.username or "", credential.expires_at, credential.issued_at)

    def mirror(self, record: Credential | Revoked) -> None:
        """Keep a record read from the shared store, as put-if-newer keeps it there: a credential issued later, or a tombstone.

        A tombstone replaces the credential it blocks (and an older tombstone); it lives as long as the revoked credential.
        """
        with self._mutex:
            held = self._held(self._clock())
            if held is None:
                self._record = record
            elif isinstance(record, Credential):
                if not keeps_place(held, record):
                    self._record = record
            elif isinstance(held, Credential):
                if record.blocks(held):
                    self._record = record
            elif (held.issued_at or 0.0) <= (record.issued_at or 0.0):
                self._record = record

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

    def admit_user(self, bound: int, life: float) -> bool:
        """Count one more user with a record of their own unless ``bound`` were admitted within ``life`` seconds; tell which."""
        with self._upstream.mutex:
            now, admitted = self._clock(), self._upstream.admitted
            while admitted and admitted[0] <= now - life:
                admitted.popleft()
            if len(admitted) >= bound:
                return False
            admitted.append(now)
            return True

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

    def _held(self, now: float) -> Credential | Revoked | None:
        """Return the record unless it has expired (as Redis's PX would have dropped it)."""
        record = self._record
        return record if record is not None and record.expires_at > now else None


class _Upstream:
    """What the scopes of one MemoryStore share: the cool-down, the scopes themselves, named values."""

    def __init__(self):
        """Start with no cool-down and no scope."""
        self.mutex = threading.Lock()
        self.cooldown_until = 0.0
        self.failures = 0
        self.scopes: dict[str, MemoryStore] = {}  # only as many as scopes with a live record
        self.values: dict[str, tuple[str, float]] = {}  # name -> (value, until): a few fixed names
        self.admitted: deque[float] = deque()  # when each user with a record of their own was admitted, oldest first
        self.prune_above = SCOPES_PRUNE_AT
