"""The shared cache's contract inside one process: for no REDIS_URL, and while Redis is down."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

from app.core.ice import Credential
from app.core.ports import Snapshot

SCOPES_PRUNE_AT = 1024  # in-process scopes held before those with an expired credential are dropped


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
