"""CredentialCache: one TURN credential kept fresh for many callers (the shared one, or one user's).

Read path: the in-process copy (trusted for ``LOCAL_STALENESS`` seconds, never past its cache
window) -> the shared cache -> a refill, which one worker fleet-wide performs under the store's
lock while the others wait a bounded time. Before the window ends one worker refreshes in the
background. When the upstream fails the last credential is served while still valid, never
after. Which store answers (Redis, or this process's while Redis is down) is the StorePolicy's.

Shared and per-user credentials are this same code on a different scope: the user's opaque
identifier names its store entries and travels to the provider (Cloudflare's customIdentifier).
Nothing here knows Flask. Time, sleeping, randomness and thread spawning are injectable.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence

from app.core.background import daemon_spawner
from app.core.errors import RefreshError, StoreUnavailable, UpstreamError, UpstreamInvalid, UpstreamUnavailable
from app.core.ice import Credential, new_credential, rfc3339
from app.core.ports import Provider
from app.core.store_policy import StorePolicy
from app.web import metrics

log = logging.getLogger("ice_servers")

LOCK_TTL = 10.0  # seconds; outlives a whole upstream call (connect + read timeouts) and the store write
WAIT_BUDGET = 6.0  # seconds a request on a cold cache may wait in all before it gets the fallback
POLL_INTERVAL = 0.01  # seconds between looks at the shared cache while another worker refills
LOCAL_STALENESS = 2.0  # seconds the in-process copy is served without asking the shared cache
DEGRADED_RECHECK = 1.0  # seconds a stale or no-credential decision is reused before asking again
REFRESH_AHEAD_FRACTION = 0.25  # refresh in the background during the last quarter of the window...
REFRESH_AHEAD_MAX = 600.0  # ...or its last ten minutes, whichever is shorter
REFRESH_RETRY_INTERVAL = 1.0  # seconds between one process's background refresh attempts
BACKOFF_BASE = 1.0  # seconds of the first cool-down after an upstream failure, doubled each time
BACKOFF_CAP = 300.0
RETRY_AFTER_CAP = 300.0  # a 429's Retry-After is honoured up to this
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
    ):
        """Bind the scope to its stores; ``user`` (an opaque identifier, None for the shared credential) goes to the provider."""
        self.user = user
        self.policy = policy
        self.store, self._local = policy.stores(("" if user is None else f"user:{user}") if scope is None else scope)
        self.providers = tuple(providers)
        self._labels = {provider.source: provider.label for provider in self.providers}
        self.credential_ttl = credential_ttl
        self.cache_ttl = cache_ttl
        self._clock, self._sleep, self._jitter = clock, sleep, jitter
        self._spawn = spawn or daemon_spawner("ice-refresh-ahead")
        self._degraded = degraded or DegradedLog()
        self._for = "" if user is None else f" for user {user}"  # in log lines: the opaque id, never the subject
        self._hot: Credential | None = None  # the newest credential this process has seen
        self._serving: Credential | None = None  # what to serve without asking the shared cache...
        self._serving_until = 0.0  # ...until then (None until then: the fallback)
        self._refresh_ahead_at = float("inf")  # when the credential served enters its refresh-ahead quarter
        self._refill_mutex = threading.Lock()  # one refill per process; the store's lock makes it one per fleet
        self._refreshing = threading.Lock()  # one background refresh per process...
        self._refresh_not_before = 0.0  # ...and not a new thread per request while another worker refreshes
        self.memo = None  # the service's last answer from this cache, reused while ``current`` holds

    # -- read path -----------------------------------------------------------------------

    def current(self, credential: Credential | None, now: float) -> bool:
        """Tell whether the decision to serve ``credential`` still holds, without any I/O (the warm path)."""
        if credential is not self._serving or now >= self._serving_until:
            return False
        if now >= self._refresh_ahead_at:
            self._refresh_in_background(credential)
        return True

    def credential(self) -> Credential | None:
        """Return a valid credential, refilling the cache if need be; None when none can be had."""
        now = self._clock()
        if not self.providers:  # STUN only by configuration: the fallback answer is reused like any decision
            self._serving, self._serving_until = None, now + DEGRADED_RECHECK
            return None
        serving = self._serving
        if now < self._serving_until and (serving is None or serving.is_valid(now)):
            if serving is not None and now >= self._refresh_ahead_at:
                self._refresh_in_background(serving)
            return serving
        store = self._store(now)
        try:
            credential = store.get()
        except StoreUnavailable as exc:
            store = self._shared_failed(exc)
            credential = store.get()
        if credential is not None:
            metrics.HIT.inc()
            log.debug(
                "Using cached %s TURN credentials%s, valid until %s", self._label(credential), self._for, rfc3339(credential.expires_at)
            )
            self._remember(credential, store, now)
            if now >= self._refresh_ahead_at:
                self._refresh_in_background(credential)
            return credential
        metrics.MISS.inc()
        credential = self._refill(now + WAIT_BUDGET)
        if credential is None or not credential.is_fresh(self._clock()):
            # Degraded (stale or none): decided for a second, so an outage costs no Redis trip per request.
            self._serving, self._serving_until = credential, self._clock() + DEGRADED_RECHECK
        return credential

    def _refill(self, deadline: float) -> Credential | None:
        """Refill on a miss: one thread per process, one process per fleet; bounded by ``deadline``."""
        if not self._refill_mutex.acquire(timeout=max(0.0, deadline - self._clock())):
            return self._last_resort(self._store(self._clock()))
        try:
            return self._refill_locked(deadline)
        finally:
            self._refill_mutex.release()

    def _refill_locked(self, deadline: float) -> Credential | None:
        """Decide on one snapshot of the store: serve, put back, revalidate in the background, or fetch."""
        waited = False
        while True:
            now = self._clock()
            store = self._store(now)
            try:
                snapshot = store.snapshot()
            except StoreUnavailable as exc:
                self._shared_failed(exc)
                continue  # the in-process store answers from now on
            if snapshot.fresh is not None:
                self._remember(snapshot.fresh, store, now)
                return snapshot.fresh
            last = self._newest_valid(now, snapshot.last)
            if last is not None and last.is_fresh(now):
                # The store lost it (Redis restarted, junk written over it): put it back, no upstream call.
                self._put(store, last)
                self._remember(last, store, now)
                return last
            if snapshot.failures or snapshot.cooldown:
                # The upstream is known to fail: nobody waits on it. With nothing valid left a local
                # provider serves at once; otherwise one worker retries off the request path.
                if last is None and (minted := self._issue(store, remote=False)) is not None:
                    return minted
                if not snapshot.cooldown:
                    self._refresh_in_background(last)
                if last is not None:
                    metrics.STALE.inc()
                    expiry = rfc3339(last.expires_at)
                    self._degraded.warn(now, f"serving the last TURN credential{self._for} past its refresh point; it expires at {expiry}")
                return last
            try:
                token = store.acquire_lock(LOCK_TTL)
            except StoreUnavailable as exc:
                self._shared_failed(exc)
                continue
            if token is not None:
                return self._fill_holding_lock(store, token)
            if self._clock() + POLL_INTERVAL >= deadline:
                log.warning("Gave up waiting for another worker to fetch TURN credentials%s", self._for)
                return self._newest_valid(self._clock(), snapshot.last)
            if not waited:
                waited = True
                metrics.LOCK_WAIT.inc()
            self._sleep(POLL_INTERVAL)

    def _fill_holding_lock(self, store, token: str, seen: Credential | None = None) -> Credential | None:
        """Check again holding the lock, then ask the providers and store what they give."""
        try:
            current = store.get()
            if current is not None and (seen is None or current.issued_at > seen.issued_at):
                self._remember(current, store, self._clock())
                return current
            return self._issue(store) or self._last_resort(store)
        except StoreUnavailable as exc:
            self._shared_failed(exc)
            return self._last_resort(self._local)
        finally:
            self._release(store, token)

    def _issue(self, store, remote: bool = True) -> Credential | None:
        """Ask the providers in order (only local ones unless ``remote``); store and return the first credential.

        A failing remote provider starts the cool-down; the next provider is asked only when no valid
        credential is left, so a cached credential is served until it expires (stale-if-error).
        """
        for provider in self.providers:
            if provider.remote and not remote:
                continue
            try:
                return self._obtain(provider, store)
            except UpstreamError as exc:
                self._cool_down(store, provider, exc)
                if self._last_resort(store) is not None:
                    return None
        return None

    def _obtain(self, provider: Provider, store) -> Credential:
        """Get a credential from ``provider`` and store it; raise UpstreamError."""
        issued_at = self._clock()  # before the call: the expiry errs early, never late
        ice_servers = self._call(provider)
        credential = new_credential(ice_servers, provider.source, issued_at, self.credential_ttl, self.cache_ttl)
        self._store_new(store, credential)
        return credential

    def _last_resort(self, store) -> Credential | None:
        """Return the newest valid credential anywhere (the store's last, this process's own), or None."""
        return self._newest_valid(self._clock(), self._last_stored(store))

    def _last_stored(self, store) -> Credential | None:
        """Return the store's last credential, or None when it does not answer."""
        try:
            return store.snapshot().last
        except StoreUnavailable as exc:
            self._shared_failed(exc)
            return None

    def _call(self, provider: Provider) -> list[dict]:
        """Ask ``provider`` for a credential, timing and counting the outcome."""
        log.info("Generating new %s TURN credentials%s", provider.label, self._for)
        started, outcome = time.perf_counter(), "success"
        try:
            return provider.issue(self.credential_ttl, user=self.user)
        except UpstreamError as exc:
            outcome = _outcome(exc)
            raise
        finally:
            metrics.UPSTREAM_DURATION.observe(time.perf_counter() - started)
            metrics.UPSTREAM_REQUESTS.labels(outcome).inc()

    def _store_new(self, store, credential: Credential) -> None:
        """Store a new credential (a newer one already held wins) and end any cool-down."""
        if self._put(store, credential):
            try:
                store.clear_failures()
            except StoreUnavailable as exc:
                self._shared_failed(exc)
        self._remember(credential, store, self._clock())
        log.info(
            "Generated new %s TURN credentials%s, valid until %s (refresh at %s)",
            self._label(credential),
            self._for,
            rfc3339(credential.expires_at),
            rfc3339(credential.refresh_at),
        )

    def _cool_down(self, store, provider: Provider, exc: UpstreamError) -> None:
        """Start a fleet-wide cool-down: exponential with jitter, at least the 429's Retry-After."""
        try:
            failures = store.snapshot().failures + 1
        except StoreUnavailable as failure:
            store = self._shared_failed(failure)
            failures = store.snapshot().failures + 1
        seconds = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failures - 1)) * (0.5 + self._jitter() / 2)
        if exc.retry_after is not None:
            seconds = max(seconds, min(exc.retry_after, RETRY_AFTER_CAP))
        try:
            store.start_cooldown(seconds)
        except StoreUnavailable as failure:
            self._shared_failed(failure).start_cooldown(seconds)
        log.warning("Failed to fetch TURN credentials from %s: %s; next try in %.1f s", provider.label, exc, seconds)

    def _newest_valid(self, now: float, *candidates: Credential | None) -> Credential | None:
        """Return the newest still-valid credential among ``candidates`` and this process's own."""
        pool = [*candidates, self._hot, self._local.snapshot().last]
        valid = [c for c in pool if c is not None and c.is_valid(now)]
        return max(valid, key=lambda c: c.expires_at) if valid else None

    # -- refresh ahead -------------------------------------------------------------------

    def _refresh_in_background(self, seen: Credential | None) -> None:
        """Start one background refresh in this process; the store's lock makes it one per fleet."""
        now = self._clock()
        if now < self._refresh_not_before or not self._refreshing.acquire(blocking=False):
            return
        self._refresh_not_before = now + REFRESH_RETRY_INTERVAL
        metrics.REFRESH.inc()
        try:
            self._spawn(lambda: self._refresh(seen))
        except RuntimeError:  # no thread could be started (interpreter shutting down)
            self._refreshing.release()

    def _refresh(self, seen: Credential | None) -> None:
        """Replace ``seen`` unless another worker already did or the upstream is cooling down."""
        try:
            store = self._store(self._clock())
            if store.snapshot().cooldown:
                return
            token = store.acquire_lock(LOCK_TTL)
            if token is not None:
                self._fill_holding_lock(store, token, seen=seen)
        except StoreUnavailable as exc:
            self._shared_failed(exc)
        finally:
            self._refreshing.release()

    # -- forced replacement (operator actions) ---------------------------------------------

    def replace(self) -> Credential:
        """Fetch a credential now into the shared cache, from the first provider that gives one.

        The cool-down is ignored (an operator asked) and ended by a success. The new credential
        expires later than any stored, so put-if-newer makes every worker take it at its next
        look at the shared cache. Raises RefreshError.
        """
        deadline = self._clock() + LOCK_TTL
        try:
            while (token := self.store.acquire_lock(LOCK_TTL)) is None:
                if self._clock() >= deadline:
                    raise RefreshError("another refresh still holds the lock; try again in a few seconds")
                self._sleep(POLL_INTERVAL)
            try:
                failures = []
                for provider in self.providers:
                    try:
                        return self._obtain(provider, self.store)
                    except UpstreamError as exc:
                        failures.append(f"{provider.label}: {exc}")
                raise RefreshError("; ".join(failures))
            finally:
                self.store.release_lock(token)
        except StoreUnavailable as exc:
            raise RefreshError(f"shared cache: {exc}") from None

    # -- stores --------------------------------------------------------------------------

    def _store(self, now: float):
        """Return the shared store, or the in-process one while the shared store is in its time-out."""
        return self._local if self.policy.use_local(now) else self.store

    def _shared_failed(self, exc: StoreUnavailable):
        """Report the shared store's failure to the policy and return the in-process store."""
        self.policy.failed(exc)
        return self._local

    def _remember(self, credential: Credential, store, now: float) -> None:
        """Keep ``credential`` as the in-process copy, and in the in-process store for Redis outages."""
        if credential is not self._hot:
            metrics.CREDENTIAL_EXPIRY.set(credential.expires_at)
        self._hot = credential
        self._serving, self._serving_until = credential, min(now + LOCAL_STALENESS, credential.refresh_at)
        # Refresh in the background during the last quarter of the window (at most its last 10 min).
        window = credential.refresh_at - credential.issued_at
        self._refresh_ahead_at = credential.refresh_at - min(window * REFRESH_AHEAD_FRACTION, REFRESH_AHEAD_MAX)
        if store is not self._local:
            self._local.put(credential)

    def _label(self, credential: Credential) -> str:
        """Name a credential's source for log lines (a provider may have been removed since it was cached)."""
        return self._labels.get(credential.source, credential.source)

    def _put(self, store, credential: Credential) -> bool:
        """Store ``credential``; tell whether it is now the one held (a newer one wins)."""
        try:
            stored = store.put(credential)
        except StoreUnavailable as exc:
            self._shared_failed(exc)
            return False
        if not stored:
            log.info("A newer TURN credential was already cached; keeping it")
        return stored

    def _release(self, store, token: str) -> None:
        """Release the store's lock; if the store is gone the lock's expiry frees it."""
        try:
            store.release_lock(token)
        except StoreUnavailable as exc:
            self._shared_failed(exc)


def _outcome(exc: UpstreamError) -> str:
    """Name an upstream failure for the metrics."""
    if isinstance(exc, UpstreamUnavailable):
        return "unavailable"
    if isinstance(exc, UpstreamInvalid):
        return "invalid"
    return "rate_limited" if exc.status == 429 else "rejected"
