"""CredentialCache: one scope's TURN credential (the shared one, or one user's), kept for many callers.

Two places hold it. The scope's one record in the shared store (Redis: every worker of every host;
it carries refresh_at and expires_at), and this process's copy, trusted for LOCAL_STALENESS seconds
and never past its window, which also keeps the answer encoded for the service. A request takes the
copy, else reads the record, else refills: one worker fleet-wide, under the store's lock, while the
others wait a bounded time. In the last quarter of the window one worker refreshes in the background.
When the upstream fails the last valid credential is served, never past its expiry, and a cool-down
in the store holds every worker back; only with nothing valid left does the next provider serve, then
the service's fallback.

A local provider (a TURN shared secret) is an HMAC: every process mints it itself, for windows of
the clock (so every process mints the same one), with no record, lock or cool-down.

While the shared store fails, the store policy hands this process's own store (a MemoryStore) for a
second at a time, and the same steps run against it: the copy goes back into it first, as it goes
back into a Redis that restarted empty. Nothing here knows Flask or Redis; time, sleeping,
randomness, threads and metrics are handed in.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence

from app.core.background import daemon_spawner
from app.core.errors import MintDeferred, RefreshError, StoreUnavailable
from app.core.ice import Credential, rfc3339
from app.core.ports import NullRecorder, Provider, Recorder, Snapshot
from app.core.refill import LOCK_TTL, Refill
from app.core.store_policy import StorePolicy

log = logging.getLogger("ice_servers")

WAIT_BUDGET = 6.0  # seconds a request on a cold cache may wait in all before it gets the fallback
LOCAL_STALENESS = 2.0  # seconds the copy is served without asking the shared cache
DEGRADED_RECHECK = 1.0  # seconds a stale or no-credential decision is reused before asking again
REFRESH_AHEAD_FRACTION = 0.25  # refresh in the background during the last quarter of the window...
REFRESH_AHEAD_MAX = 600.0  # ...or its last ten minutes, whichever is shorter
REFRESH_RETRY_INTERVAL = 1.0  # seconds between one process's background refresh attempts
DEGRADED_LOG_INTERVAL = 60.0  # seconds between repeated "degraded" warnings of one process


class DegradedLog:
    """Warn about degraded answers at most once a minute per process, so an outage does not flood the log."""

    def __init__(self):
        """Start silent."""
        self._logged_at = float("-inf")

    def warn(self, now: float, message: str) -> None:
        """Log ``message`` unless a degraded warning was logged within the interval."""
        if now - self._logged_at >= DEGRADED_LOG_INTERVAL:
            self._logged_at = now
            log.warning(message[0].upper() + message[1:])


class Copy:
    """The process's copy: the credential (None: nothing valid, the fallback answers), until when it is trusted, its answer."""

    __slots__ = ("answer", "answer_key", "checked_until", "credential")

    def __init__(self, credential: Credential | None, checked_until: float):
        """Hold ``credential`` until ``checked_until``; the service puts the encoded answer beside it."""
        self.credential = credential
        self.checked_until = checked_until
        self.answer = None  # the service's Answer built from it, and the whole second of ttl it shows
        self.answer_key: int | None = None


class CredentialCache:
    """Keep one scope's credential: read, refill once per window fleet-wide, refresh ahead, serve stale on error."""

    def __init__(
        self,
        policy: StorePolicy,
        providers: Sequence[Provider],
        credential_ttl: int,
        cache_ttl: int,
        user: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        spawn: Callable[[Callable[[], None]], None] | None = None,
        degraded: DegradedLog | None = None,
        scope: str | None = None,
        recorder: Recorder | None = None,
        budget: Callable[[], bool] | None = None,
        max_user_records: int | None = None,
    ):
        """Bind the scope to its stores; ``user`` (an opaque id) goes to the provider; ``budget``: may a mint happen now.

        ``max_user_records``: the fleet's bound on users with a record of their own (ICE_MAX_USER_RECORDS).
        """
        self.user = user
        self.policy = policy
        self.store, self._local = policy.stores(("" if user is None else f"user:{user}") if scope is None else scope)
        self.providers = tuple(providers)
        self._remote_sources = {provider.source for provider in self.providers if provider.remote}
        self._labels = {provider.source: provider.label for provider in self.providers}
        self.credential_ttl = credential_ttl
        self.cache_ttl = cache_ttl
        self._clock, self._sleep, self._jitter = clock, sleep, jitter
        self._spawn = spawn or daemon_spawner("ice-refresh-ahead")
        self._degraded = degraded or DegradedLog()
        self._recorder = recorder or NullRecorder()
        self.refill = Refill(
            policy,
            self._local,
            self.providers,
            credential_ttl,
            cache_ttl,
            user,
            clock,
            sleep,
            jitter,
            self._recorder,
            budget,
            max_user_records,
        )
        self._for = "" if user is None else f" for user {user}"  # in log lines: the opaque id, never the subject
        self.copy: Copy | None = None
        self._refill_mutex = threading.Lock()  # one refill per process; the store's lock makes it one per fleet (refill.py)
        self._refreshing = threading.Lock()  # one background refresh per process...
        self._refresh_not_before = 0.0  # ...and not a new thread per request while another worker refreshes

    # -- read path -----------------------------------------------------------------------

    def trusted(self, now: float) -> Copy | None:
        """Return the copy while it may be served without asking the store (the warm path: no I/O), else None."""
        copy = self.copy
        if copy is None or now >= copy.checked_until:
            return None
        if copy.credential is not None:
            if not copy.credential.is_valid(now):
                return None
            fresher = self._refresh_ahead_if_due(copy.credential, now)
            latest = self.copy
            if fresher is not None and latest is not None and latest.credential is fresher:
                return latest  # refreshed on this request (serverless: inline): the new credential
        return copy

    def credential(self) -> Credential | None:
        """Return a valid credential, refilling if need be; None when none can be had. Raises MintDeferred (a user's, over budget)."""
        now = self._clock()
        copy = self.trusted(now)
        if copy is not None:
            return copy.credential
        asked_remote = False
        for provider in self.providers:
            if not provider.remote:  # the first local provider ends the chain: it always mints
                return self._mint(provider, now, recheck=asked_remote)
            if not asked_remote:  # the store and a refill try every remote provider in turn
                asked_remote = True
                credential = self._from_store(now)
                if credential is not None:
                    return credential
        return self._hold(None, self._clock() + DEGRADED_RECHECK)

    def _from_store(self, now: float) -> Credential | None:
        """Serve the record (or our fresher copy, put back), else refill, else what is left valid; None: nothing valid."""
        store = self._store(now)
        try:
            snapshot = store.snapshot()
        except StoreUnavailable as exc:
            store = self._shared_failed(exc)
            snapshot = store.snapshot()
        credential = self._newest(store, snapshot, now)
        if credential is not None and credential.is_fresh(now):
            self._recorder.cache_event("hit")
            until = rfc3339(credential.expires_at)
            log.debug("Using cached %s TURN credentials%s, valid until %s", self._label(credential), self._for, until)
            return self._keep(credential, now)
        self._recorder.cache_event("miss")
        stale = credential if credential is not None and credential.is_valid(now) else None
        if snapshot.failures or snapshot.cooldown:
            # The upstream is known to fail: nobody waits on it; one worker retries off the request path (serverless: on
            # this request, and what it got is served).
            fresher = self._refresh_in_background(stale) if not snapshot.cooldown else None
            return fresher if fresher is not None else self._serve_stale(stale, now)
        return self._refill(store, stale, now + WAIT_BUDGET)

    def _newest(self, store, snapshot: Snapshot, now: float) -> Credential | None:
        """Return the newer of the record and this process's copy; put the copy back where the store lost or aged it."""
        record = snapshot.credential
        mine = self.copy.credential if self.copy is not None else None
        if store is not self._local and (snapshot.credential or snapshot.revoked) is not None:
            # What Redis holds goes into this process's own store too: at a later blip that store answers, and must
            # never hand out a credential Redis has since replaced or revoked (a copy put there at an earlier blip).
            self._local.mirror(snapshot.credential or snapshot.revoked)
        if mine is not None and snapshot.revoked is not None and snapshot.revoked.blocks(mine):
            self.copy, mine = None, None  # revoked: never served again, never put back
        if mine is None or mine.source not in self._remote_sources or not mine.is_valid(now):
            return record
        if record is not None and record.issued_at >= mine.issued_at:
            return record
        if mine.is_fresh(now) and snapshot.revoked is None:
            # Redis restarted empty, junk was written over the record, or this is our own store now that Redis fails:
            # the copy goes back, and nobody asks the upstream for it.
            self.refill.put(store, mine)
        return mine

    def _serve_stale(self, stale: Credential | None, now: float) -> Credential | None:
        """Answer a known outage at once: the last valid credential, held for a second, or None."""
        if stale is None:
            return None
        self._recorder.cache_event("stale")
        expiry = rfc3339(stale.expires_at)
        self._degraded.warn(now, f"serving the last TURN credential{self._for} past its refresh point; it expires at {expiry}")
        return self._hold(stale, now + DEGRADED_RECHECK)

    def _refill(self, store, stale: Credential | None, deadline: float) -> Credential | None:
        """Refill on a miss: one thread per process, one process per fleet; what is left valid when it cannot."""
        if not self._refill_mutex.acquire(timeout=max(0.0, deadline - self._clock())):
            return self._serve_stale(stale, self._clock())
        try:
            credential = self.refill.wait_or_fill(store, deadline)
        except MintDeferred:
            # A user's mint put off: their own credential while it is valid, else the decision held a second (each ask of
            # the budget costs the store a lock, a snapshot and a script call) and the caller serves the shared one.
            if stale is not None:
                return self._serve_stale(stale, self._clock())
            self._hold(None, self._clock() + DEGRADED_RECHECK)
            raise
        finally:
            self._refill_mutex.release()
        now = self._clock()
        return self._keep(credential, now) if credential is not None else self._serve_stale(stale, now)

    def _mint(self, provider: Provider, now: float, recheck: bool = False) -> Credential:
        """Mint a local provider's credential for the clock's window (the same in every process); keep it.

        ``recheck``: a remote provider before it has nothing valid, and is looked at again within a second.
        """
        start = (now // self.cache_ttl) * self.cache_ttl
        held = self.copy.credential if self.copy is not None else None
        if held is not None and held.source == provider.source and held.issued_at == start:
            credential = held
        else:
            servers = provider.mint(int(start + self.credential_ttl), user=self.user)
            credential = Credential(tuple(servers), provider.source, start, start + self.cache_ttl, start + self.credential_ttl)
        if recheck:
            remote = ", ".join(p.label for p in self.providers if p.remote)
            self._degraded.warn(now, f"no TURN credential from {remote}{self._for}: serving {provider.label} credentials")
        return self._hold(credential, min(credential.refresh_at, now + DEGRADED_RECHECK) if recheck else credential.refresh_at)

    # -- the copy ------------------------------------------------------------------------

    def _keep(self, credential: Credential, now: float) -> Credential:
        """Make ``credential`` the copy, trusted for LOCAL_STALENESS (never past its window); refresh ahead if due."""
        self._hold(credential, min(now + LOCAL_STALENESS, credential.refresh_at))
        fresher = self._refresh_ahead_if_due(credential, now)
        return fresher if fresher is not None else credential

    def _hold(self, credential: Credential | None, until: float) -> Credential | None:
        """Make ``credential`` (or None: the fallback) the copy until ``until``."""
        previous = self.copy.credential if self.copy is not None else None
        if credential is not None and credential is not previous:
            self._recorder.credential(credential.refresh_at, credential.expires_at)
        self.copy = Copy(credential, until)
        return credential

    # -- refresh ahead -------------------------------------------------------------------

    def _refresh_ahead_if_due(self, credential: Credential, now: float) -> Credential | None:
        """In the last quarter of a remote credential's window (its last 10 min at most), refresh it in the background.

        Return the newer credential the copy holds already (the refresh ran inline), else None.
        """
        if credential.source not in self._remote_sources:
            return None  # a local mint: the next window mints anew
        window = credential.refresh_at - credential.issued_at
        if now >= credential.refresh_at - min(window * REFRESH_AHEAD_FRACTION, REFRESH_AHEAD_MAX):
            return self._refresh_in_background(credential)
        return None

    def _refresh_in_background(self, seen: Credential | None) -> Credential | None:
        """Start one background refresh in this process; the store's lock makes it one per fleet.

        Serverless, the spawner runs it inline: return the valid credential newer than ``seen`` the copy then holds, else None.
        """
        now = self._clock()
        if now < self._refresh_not_before or not self._refreshing.acquire(blocking=False):
            return None
        self._refresh_not_before = now + REFRESH_RETRY_INTERVAL
        self._recorder.cache_event("refresh")
        try:
            self._spawn(lambda: self._refresh(seen))
        except RuntimeError:  # no thread could be started (interpreter shutting down)
            self._refreshing.release()
            return None
        copy = self.copy
        held = copy.credential if copy is not None else None
        if held is None or held.source not in self._remote_sources or not held.is_valid(self._clock()):
            return None
        return held if seen is None or held.issued_at > seen.issued_at else None

    def _refresh(self, seen: Credential | None) -> None:
        """Replace ``seen`` unless another worker already did or the upstream is cooling down."""
        try:
            store = self._store(self._clock())
            if store.snapshot().cooldown:
                return
            token = store.acquire_lock(LOCK_TTL)
            credential = self.refill.fill(store, token, seen=seen) if token is not None else None
            if credential is not None:
                self._keep(credential, self._clock())
        except StoreUnavailable as exc:
            self._shared_failed(exc)
        except MintDeferred:
            pass  # the budget is spent this second: the next request past the refresh point tries again
        finally:
            self._refreshing.release()

    # -- operator actions ----------------------------------------------------------------

    def replace(self) -> Credential:
        """Get a credential now into the shared cache, from the first provider that gives one (a local one mints).

        The cool-down is ignored (an operator asked) and ended by a success. The new credential
        was issued after any stored, so put-if-newer makes every worker take it at its next look
        at the shared cache. Raises RefreshError.
        """
        local = next((provider for provider in self.providers if not provider.remote), None)
        if local is not None and not self.providers[0].remote:
            return self._mint(local, self._clock())
        try:
            credential = self.refill.replace(self.store)
        except RefreshError:
            if local is None:
                raise
            return self._mint(local, self._clock())  # the next provider
        return self._keep(credential, self._clock())

    # -- stores --------------------------------------------------------------------------

    def _store(self, now: float):
        """Return the shared store, or the in-process one while the shared store is in its time-out."""
        return self._local if self.policy.use_local(now) else self.store

    def _shared_failed(self, exc: StoreUnavailable):
        """Report the shared store's failure to the policy and return the in-process store."""
        self.policy.failed(exc)
        return self._local

    def _label(self, credential: Credential) -> str:
        """Name a credential's source for log lines (a provider may have been removed since it was cached)."""
        return self._labels.get(credential.source, credential.source)
