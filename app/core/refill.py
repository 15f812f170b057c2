"""Refill: one scope's new credential from the remote providers, once per window for the whole fleet.

One worker fleet-wide takes the store's lock (``SET NX PX`` with a random token, an expiry, a
compare-and-delete release), checks again, asks the remote providers in order and stores the first
credential with put-if-newer; the others wait a bounded time for it. A failure starts a cool-down in
the store, exponential with jitter and at least a 429's Retry-After, that holds every worker back.
It answers only with a fresh credential, or None: what to serve meanwhile is the cache's decision.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

from app.core.errors import MintDeferred, RefreshError, StoreUnavailable, UpstreamError, UpstreamInvalid, UpstreamUnavailable
from app.core.ice import Credential, new_credential, rfc3339
from app.core.numbers import parse_digits
from app.core.ports import Issued, Provider, Recorder
from app.core.store_policy import StorePolicy

log = logging.getLogger("ice_servers")

LOCK_TTL = 10.0  # seconds; outlives a whole upstream call (connect + read timeouts) and the store write
POLL_INTERVAL = 0.01  # seconds between looks at the shared cache while another worker refills
BACKOFF_BASE = 1.0  # seconds of the first cool-down after an upstream failure, doubled each time
BACKOFF_CAP = 300.0
CHAIN_BUDGET = 5.5  # seconds a refill asks the providers in all: within a cold request's 6 s (cache.WAIT_BUDGET)
CONNECT_BUDGET, READ_BUDGET = 2.0, 3.5  # at most, per provider: what a single provider's own timeouts are
REPLACE_BUDGET = LOCK_TTL - 1.0  # seconds an operator's refresh asks the providers in all: within the lock it holds
RESERVE = 1.5  # seconds kept, while a provider is asked, for each one after it
MIN_ATTEMPT = 0.5  # seconds a provider is worth asking with
PROVIDER_MEMORY = 3600  # seconds a provider's failures in a row, and its last outcome, are remembered
RETRY_AFTER_CAP = 300.0  # a 429's Retry-After is honoured up to this
BOUND_LOG_INTERVAL = 60.0  # seconds between warnings that ICE_MAX_USER_RECORDS is reached
BOUND_RECHECK = 10.0  # seconds a process, once past ICE_MAX_USER_RECORDS, defers user mints without asking Redis


class Refill:
    """Get a scope's credential from its remote providers under the store's lock, and store it."""

    def __init__(
        self,
        policy: StorePolicy,
        local,
        providers: Sequence[Provider],
        credential_ttl: int,
        cache_ttl: int,
        user: str | None,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        jitter: Callable[[], float],
        recorder: Recorder,
        budget: Callable[[], bool] | None = None,
        max_user_records: int | None = None,
    ):
        """Keep what a refill needs; ``local``: the scope's in-process store; ``budget``: may a (user's) credential be minted now.

        ``max_user_records``: users with a record of their own at once, fleet-wide (ICE_MAX_USER_RECORDS; None: no bound).
        """
        self.policy = policy
        self._local = local
        self.remote = tuple(provider for provider in providers if provider.remote)
        self.credential_ttl, self.cache_ttl = credential_ttl, cache_ttl
        self.user = user
        self._clock, self._sleep, self._jitter = clock, sleep, jitter
        self._recorder = recorder
        self._budget = budget
        self.max_user_records = max_user_records
        self._for = "" if user is None else f" for user {user}"

    def wait_or_fill(self, store, deadline: float) -> Credential | None:
        """Take the lock and fill, or wait for the worker that holds it; a fresh credential, or None (failed, cooling, gave up)."""
        waited = False
        while True:
            try:
                token = store.acquire_lock(LOCK_TTL)
                if token is not None:
                    return self.fill(store, token)
                if not waited:
                    waited = True
                    self._recorder.cache_event("lock_wait")
                if self._clock() + POLL_INTERVAL >= deadline:
                    log.warning("Gave up waiting for another worker to fetch TURN credentials%s", self._for)
                    return None
                self._sleep(POLL_INTERVAL)
                snapshot = store.snapshot()
            except StoreUnavailable as exc:
                store = self.failed_over(exc)  # the in-process store answers from now on
                continue
            if snapshot.credential is not None and snapshot.credential.is_fresh(self._clock()):
                return snapshot.credential  # the holder stored it
            if snapshot.failures or snapshot.cooldown:
                return None  # the holder failed: nobody waits for it to try again

    def fill(self, store, token: str, seen: Credential | None = None) -> Credential | None:
        """Check again holding the lock (a refill may have just stored, or just failed), then ask the remote providers.

        ``seen``: the credential a refresh ahead means to replace (anything issued later will do).
        """
        try:
            snapshot = store.snapshot()
            now, current = self._clock(), snapshot.credential
            if current is not None and current.is_fresh(now) and (seen is None or current.issued_at > seen.issued_at):
                return current
            if snapshot.cooldown:  # the holder before us failed: nobody calls until the cool-down ends
                return None
            if self.user is not None and not self._admit(store):
                raise MintDeferred()  # past ICE_MAX_USER_RECORDS: this user gets the shared credential meanwhile
            if self._budget is not None and not self._budget():
                raise MintDeferred()
            if len(self.remote) == 1:
                try:
                    return self.obtain(self.remote[0], store)
                except UpstreamError as exc:
                    self._cool_down(store, self.remote[0], exc)
                return None
            return self._chain(store)
        except StoreUnavailable as exc:
            self.failed_over(exc)
            return None
        finally:
            self._release(store, token)

    def _admit(self, store) -> bool:
        """Count one more user mint within ICE_MAX_USER_RECORDS (refreshes too: every live record was minted within its life).

        Checked before the mint budget is spent; once past the bound, this process asks Redis again only after
        BOUND_RECHECK seconds. Said once a minute.
        """
        if self.max_user_records is None:
            return True
        now, bound = self._clock(), self.policy.user_bound  # what this process knows of the bound, for every user
        if now >= bound.full_until and store.admit_user(self.max_user_records, self.credential_ttl):
            return True
        if now >= bound.full_until:
            bound.full_until = now + BOUND_RECHECK
        if now >= bound.logged_at + BOUND_LOG_INTERVAL:
            bound.logged_at = now
            log.warning(
                "ICE_MAX_USER_RECORDS=%d user credentials were minted within one credential life: users without one (and "
                "those whose own is due) get the shared credential until older mints leave the count",
                self.max_user_records,
            )
        self._recorder.cache_event("bounded")
        return False

    def _chain(self, store) -> Credential | None:
        """Ask the remote providers in order, skipping those in their own cool-down, within one cold request's budget.

        The first that answers wins: another vendor's full-life credential beats the failed one's stale one.
        Each failing provider cools down on its own (a success clears only its own); the fleet-wide
        cool-down starts only when none answered, and ends when the first of them may be asked again.
        """
        deadline, waits, askable = self._clock() + CHAIN_BUDGET, [], []
        for provider in self.remote:
            resting = self._resting(store, provider)
            if resting > 0:
                waits.append(resting)
            else:
                askable.append(provider)
        for index, provider in enumerate(askable):
            share = self._share(deadline, len(askable) - index)
            if share < MIN_ATTEMPT:  # the vendors took longer than their timeouts (DNS, a trickle): not theirs to blame
                waits.append(BACKOFF_BASE)  # a short fleet-wide pause: the waiters serve what is valid meanwhile
                break
            connect = min(CONNECT_BUDGET, share / 3)  # a black hole fails the connect, a silent vendor the read
            try:
                return self.obtain(provider, store, timeout=(connect, min(READ_BUDGET, share - connect)))
            except UpstreamError as exc:
                waits.append(self._provider_cool_down(store, provider, exc))
        if waits:
            self._start_cooldown(store, min(waits))
        return None

    def _share(self, deadline: float, remaining: int) -> float:
        """Return the seconds the next of ``remaining`` providers is asked with: all that is left but a reserve for each after it.

        A healthy first vendor gets most of the budget (a slow answer is still an answer); a hanging one leaves the
        next ones RESERVE seconds each.
        """
        left = deadline - self._clock()
        return max(left / remaining, left - RESERVE * (remaining - 1))

    def obtain(self, provider: Provider, store, timeout: tuple[float, float] | None = None) -> Credential:
        """Get a credential from ``provider`` and store it, ending the cool-down; raise UpstreamError.

        The vendor's answer sets the credential's life (Twilio's ttl, Metered's expiryInSeconds), and the
        window keeps ICE_CACHE_TTL's share of it: a shorter grant brings the refresh earlier.
        """
        issued_at = self._clock()  # before the call: the expiry errs early, never late
        log.info("Generating new %s TURN credentials%s", provider.label, self._for)
        started, outcome = time.perf_counter(), "success"
        try:
            answer = provider.issue(self.credential_ttl, user=self.user, timeout=timeout)
        except UpstreamError as exc:
            outcome = _outcome(exc)
            self._last_outcome(store, provider, f"{outcome}: {exc}")
            raise
        finally:
            self._recorder.upstream(outcome, time.perf_counter() - started, provider.source)
        servers, granted = (answer.ice_servers, answer.ttl) if isinstance(answer, Issued) else (answer, self.credential_ttl)
        window = min(self.cache_ttl, max(1, int(granted * self.cache_ttl / self.credential_ttl)), max(1, granted - 1))
        credential = new_credential(servers, provider.source, issued_at, granted, window)
        if self.put(store, credential):
            try:
                store.clear_failures()
                if len(self.remote) > 1:  # its own cool-down ends; the others' stand
                    store.write(_named(provider, "cooldown"), "", 0.001)
                    store.write(_named(provider, "failures"), "0", 0.001)
            except StoreUnavailable as exc:
                self.failed_over(exc)
        self._last_outcome(store, provider, "success")
        expiry, refresh = rfc3339(credential.expires_at), rfc3339(credential.refresh_at)
        log.info("Generated new %s TURN credentials%s, valid until %s (refresh at %s)", provider.label, self._for, expiry, refresh)
        return credential

    def replace(self, store) -> Credential | None:
        """Get a credential now, the cool-down ignored (an operator asked); None when no remote provider is configured.

        Raises RefreshError naming every provider's failure, or the store's.
        """
        if not self.remote:
            return None
        deadline = self._clock() + LOCK_TTL
        try:
            while (token := store.acquire_lock(LOCK_TTL)) is None:
                if self._clock() >= deadline:
                    raise RefreshError("another refresh still holds the lock; try again in a few seconds")
                self._sleep(POLL_INTERVAL)
            try:
                failures, ends = [], self._clock() + REPLACE_BUDGET  # every call ends while the lock is ours
                for index, provider in enumerate(self.remote):
                    share = self._share(ends, len(self.remote) - index)
                    if share < MIN_ATTEMPT:
                        failures.append(f"{provider.label} and any after it: not asked, no time left")
                        break
                    connect = min(CONNECT_BUDGET, share / 3)
                    try:
                        return self.obtain(provider, store, timeout=(connect, min(READ_BUDGET, share - connect)))
                    except UpstreamError as exc:
                        failures.append(f"{provider.label}: {exc}")
                raise RefreshError("; ".join(failures))
            finally:
                store.release_lock(token)
        except StoreUnavailable as exc:
            raise RefreshError(f"shared cache: {exc}") from None

    def _cool_down(self, store, provider: Provider, exc: UpstreamError) -> None:
        """Start a fleet-wide cool-down: exponential with jitter, at least the 429's Retry-After."""
        try:
            failures = store.snapshot().failures + 1
        except StoreUnavailable as failure:
            store = self.failed_over(failure)
            failures = store.snapshot().failures + 1
        seconds = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failures - 1)) * (0.5 + self._jitter() / 2)
        if exc.retry_after is not None:
            seconds = max(seconds, min(exc.retry_after, RETRY_AFTER_CAP))
        try:
            store.start_cooldown(seconds)
        except StoreUnavailable as failure:
            self.failed_over(failure).start_cooldown(seconds)
        log.warning("Failed to fetch TURN credentials from %s: %s; next try in %.1f s", provider.label, exc, seconds)

    def _resting(self, store, provider: Provider) -> float:
        """Return the seconds left of ``provider``'s own cool-down (0: none)."""
        try:
            until = store.read(_named(provider, "cooldown"))
        except StoreUnavailable as exc:
            until = self.failed_over(exc).read(_named(provider, "cooldown"))
        try:
            return max(0.0, float(until) - self._clock()) if until else 0.0
        except ValueError:
            return 0.0

    def _provider_cool_down(self, store, provider: Provider, exc: UpstreamError) -> float:
        """Start ``provider``'s own cool-down: exponential with jitter, at least its 429's Retry-After; return its seconds."""
        try:
            raw = store.read(_named(provider, "failures"))
        except StoreUnavailable as failure:
            store = self.failed_over(failure)
            raw = store.read(_named(provider, "failures"))
        failures = (parse_digits(raw, max_digits=6) or 0) + 1
        seconds = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failures - 1)) * (0.5 + self._jitter() / 2)
        if exc.retry_after is not None:
            seconds = max(seconds, min(exc.retry_after, RETRY_AFTER_CAP))
        until = self._clock() + seconds
        for name, value, ttl in (
            (_named(provider, "failures"), str(failures), PROVIDER_MEMORY),
            (_named(provider, "cooldown"), repr(until), seconds),
        ):
            try:
                store.write(name, value, ttl)
            except StoreUnavailable as failure:
                self.failed_over(failure).write(name, value, ttl)
        log.warning("Failed to fetch TURN credentials from %s: %s; it is asked again in %.1f s", provider.label, exc, seconds)
        return seconds

    def _start_cooldown(self, store, seconds: float) -> None:
        """Start the fleet-wide cool-down (no provider answered) of ``seconds``."""
        try:
            store.start_cooldown(seconds)
        except StoreUnavailable as failure:
            self.failed_over(failure).start_cooldown(seconds)

    def _last_outcome(self, store, provider: Provider, outcome: str) -> None:
        """Keep ``provider``'s last outcome, with its time, for ice-status (one line, no secret: the providers' own messages)."""
        value = json.dumps({"at": self._clock(), "outcome": outcome[:200]})
        try:
            store.write(_named(provider, "last"), value, PROVIDER_MEMORY)
        except StoreUnavailable as exc:
            self.failed_over(exc).write(_named(provider, "last"), value, PROVIDER_MEMORY)

    def failed_over(self, exc: StoreUnavailable):
        """Report the shared store's failure to the policy; return the scope's in-process store, which answers from now on."""
        self.policy.failed(exc)
        return self._local

    def put(self, store, credential: Credential) -> bool:
        """Store ``credential``; tell whether it is now the one held (a newer one, or a revocation, wins)."""
        try:
            stored = store.put(credential)
        except StoreUnavailable as exc:
            self.failed_over(exc)
            return False
        if not stored:
            log.info("A newer TURN credential was already cached; keeping it")
        return stored

    def _release(self, store, token: str) -> None:
        """Release the store's lock; if the store is gone the lock's expiry frees it."""
        try:
            store.release_lock(token)
        except StoreUnavailable as exc:
            self.failed_over(exc)


def _named(provider: Provider, what: str) -> str:
    """Name a value the fleet keeps of one provider: its cool-down, its failures in a row, its last outcome."""
    return f"provider:{provider.source}:{what}"


def _outcome(exc: UpstreamError) -> str:
    """Name an upstream failure for the metrics."""
    if isinstance(exc, UpstreamUnavailable):
        return "unavailable"
    if isinstance(exc, UpstreamInvalid):
        return "invalid"
    return "rate_limited" if exc.status == 429 else "rejected"
