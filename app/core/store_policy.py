"""The Redis failure policy: the shared store behind the process's circuit breaker, and the in-process store beside it.

One policy per process, for every credential scope: every call to the shared store goes through
the breaker (app/core/breaker.py), so that while Redis is in its time-out no call waits on it and
every scope turns to its in-process store at once; when the time-out ends one call probes, and the
others go on in-process until it answers. The rate limits share the same breaker (the factory hands
it to both), so a Redis that hangs costs one probe per process, not one per thread and per concern.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from app.core.breaker import RETRY_AFTER, CircuitBreaker
from app.core.errors import StoreUnavailable
from app.core.ports import Recorder

SHARED_RETRY_AFTER = RETRY_AFTER  # seconds a failed Redis is left alone before one call probes it


class StoreResting(StoreUnavailable):
    """Not asked: the shared store is in its time-out, or another call probes it."""


class StorePolicy:
    """Choose between the shared store and this process's own."""

    def __init__(
        self,
        shared,
        clock: Callable[[], float] = time.time,
        recorder: Recorder | None = None,
        breaker: CircuitBreaker | None = None,
    ):
        """Wrap ``shared`` in the breaker; without Redis (a MemoryStore) it is the process's own store already."""
        self.breaker = breaker or CircuitBreaker(clock=clock, recorder=recorder)
        self.user_bound = UserBound()  # this process's view of ICE_MAX_USER_RECORDS, shared by every user's refill
        self.shared = GuardedStore(shared, self.breaker) if shared.shared else shared
        self.local = shared.fallback() if shared.shared else shared

    def stores(self, scope: str):
        """Return the (shared, local) stores of ``scope``; the same object twice without Redis."""
        if not scope:
            return self.shared, self.local
        shared = self.shared.scoped(scope)
        return shared, (shared if self.local is self.shared else self.local.scoped(scope))

    def use_local(self, now: float) -> bool:
        """Tell whether the shared store is in its time-out (or being probed by another call): then nobody asks it."""
        return self.breaker.resting()

    def failed(self, exc: StoreUnavailable) -> None:
        """Hear that the shared store failed (the breaker has heard it already when the call went through it).

        Neither a call the breaker refused nor an error Redis answered with (it is there) opens it.
        """
        if not isinstance(exc, StoreResting) and not exc.answered:
            self.breaker.failed(str(exc))


class UserBound:
    """What a process knows of ICE_MAX_USER_RECORDS: until when it is reached (no need to ask), when that was last said."""

    def __init__(self):
        """Start knowing nothing."""
        self.full_until = float("-inf")
        self.logged_at = float("-inf")


class GuardedStore:
    """The shared store's contract, each call through the circuit breaker: refused at once while it rests."""

    shared = True

    def __init__(self, store, breaker: CircuitBreaker):
        """Guard ``store`` (a RedisStore, or a test's shared stand-in) with ``breaker``."""
        self.inner = store
        self.breaker = breaker

    def __repr__(self) -> str:
        """Name the store guarded."""
        return repr(self.inner)

    def scoped(self, scope: str) -> GuardedStore:
        """Return another scope's store, behind the same breaker."""
        return GuardedStore(self.inner.scoped(scope), self.breaker)

    def describe(self, ask: bool = True) -> str:
        """Name the topology and its state; while the breaker is open, as configured and why it is not asked."""
        if self.breaker.is_open or not ask:
            return self.inner.describe(ask=False) + (f" (not answering: {self.breaker.reason})" if self.breaker.is_open else "")
        return self.inner.describe()

    def fallback(self):
        """Return a store of this process's own."""
        return self.inner.fallback()

    def ping(self) -> None:
        """Raise StoreUnavailable unless the shared store answers."""
        self._through(self.inner.ping)

    def get(self):
        """Return the scope's credential (whatever its window), or None."""
        return self._through(self.inner.get)

    def snapshot(self):
        """Read the record, the cool-down and the failure count."""
        return self._through(self.inner.snapshot)

    def put(self, credential) -> bool:
        """Store ``credential`` unless a newer record is held; tell whether it was stored.

        Tried even while the breaker rests (bounded by one socket timeout): it is the refill's, whose
        upstream call already happened; a credential left unstored would cost the fleet another one.
        """
        return self._through(self.inner.put, credential, always=True)

    def revoke(self, credential) -> None:
        """Leave a tombstone in the place of ``credential``."""
        self._through(self.inner.revoke, credential)

    def acquire_lock(self, ttl: float) -> str | None:
        """Take the refill lock; its token, or None."""
        return self._through(self.inner.acquire_lock, ttl)

    def release_lock(self, token: str) -> None:
        """Release the lock if ``token`` owns it; tried even while the breaker rests, or the fleet waits out its expiry."""
        self._through(self.inner.release_lock, token, always=True)

    def start_cooldown(self, seconds: float) -> None:
        """Start the fleet's cool-down."""
        self._through(self.inner.start_cooldown, seconds)

    def clear_failures(self) -> None:
        """Forget the failure run."""
        self._through(self.inner.clear_failures)

    def admit_user(self, bound: int, life: float) -> bool:
        """Count one more user with a record of their own, within the fleet's bound; tell whether they were admitted."""
        return self._through(self.inner.admit_user, bound, life)

    def read(self, name: str) -> str | None:
        """Return a named value, or None."""
        return self._through(self.inner.read, name)

    def write(self, name: str, value: str, ttl: float) -> None:
        """Store a named value for ``ttl`` seconds."""
        self._through(self.inner.write, name, value, ttl)

    def claim(self, name: str, ttl: float) -> bool:
        """Set a named value unless it is set; tell whether this call set it."""
        return self._through(self.inner.claim, name, ttl)

    def _through(self, call, *args, always: bool = False):
        """Make one call through the breaker: refused at once while it rests (unless ``always``), its outcome reported."""
        if not self.breaker.allow() and not always:
            raise StoreResting(self.breaker.reason or "Redis failed")  # the reason it rests: no call was made
        try:
            result = call(*args)
        except StoreUnavailable as exc:
            if exc.answered:
                self.breaker.succeeded()  # Redis is there: this call failed, not Redis
            else:
                self.breaker.failed(str(exc))
            raise
        except Exception as exc:  # not the store's contract, but a probe must never stay claimed
            self.breaker.failed(f"unexpected {type(exc).__name__}")
            raise
        self.breaker.succeeded()
        return result
