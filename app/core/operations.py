"""Operator actions on the shared cache: refresh a credential now, revoke one, describe what is held.

Each takes the running configuration's IceService and acts on one scope: the shared credential,
or one user's (``user``: the opaque identifier of a verified subject). Failures raise
RefreshError with a one-line message for the operator; no secret is ever in it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from app.core.cache import LOCAL_STALENESS
from app.core.errors import RefreshError, StoreUnavailable, UpstreamError
from app.core.ice import Credential, rfc3339
from app.core.ports import Snapshot
from app.core.service import IceService

log = logging.getLogger("ice_servers")

LABEL_REVOCATION_BUDGET = 20.0  # seconds a user's scope waits, cooled down, for the revocation by label and the new mint
# Beyond LOCAL_STALENESS, for the time a request already past its look at the cache takes to answer.
HANDOVER_MARGIN = 0.5
# The shipped nginx site keeps a shared answer within its second (deploy/nginx/ice-servers.conf): a revoked shared
# credential is revoked at the vendor only once no kept answer can still hand it out.
MICRO_CACHE = 1.0


@dataclass(frozen=True)
class Status:
    """What an operator asks about: where credentials come from and what the cache holds."""

    providers: tuple[str, ...]  # labels, in order
    shared: bool  # Redis configured
    store_error: str | None  # why the store did not answer, if it did not
    snapshot: Snapshot | None  # None when the store did not answer
    per_user: bool = False  # one credential per user (the snapshot is the shared one, or the user's)
    egress_limit: int | None = None  # ICE_EGRESS_LIMIT_GB in bytes, when the ceiling is on...
    egress: object | None = None  # ...and the fleet's last reading (app/spend/ceiling.py's Reading), if any...
    egress_failure: tuple[float, str] | None = None  # ...and when the last reading failed, and why
    provider_outcomes: tuple[tuple[str, float, str], ...] = ()  # each remote provider's last outcome: (label, when, what)


@dataclass(frozen=True)
class Revocation:
    """What revoke did: the credential revoked, the one now served (None: none could be had), and why not."""

    old: Credential
    new: Credential | None
    why_none: str | None  # why no new credential could be had
    serving: str  # what callers get meanwhile: a provider's label, static TURN_SERVERS, STUN only
    revoked_upstream: bool = True  # False: the vendor cannot revoke (Twilio): replaced everywhere, valid there until it expires
    vendor: str = ""  # the vendor's label, when it could not revoke


def refresh(service: IceService, user: str | None = None) -> Credential:
    """Get a credential now, from the first provider that gives one, into the shared cache.

    The cool-down is ignored (an operator asked) and ended by a success. Past the egress ceiling
    Cloudflare is not asked: the next provider mints. Raises RefreshError.
    """
    if not service.providers:
        raise RefreshError("no TURN provider configured: set CLOUDFLARE_TURN_TOKEN_ID and CLOUDFLARE_API_TOKEN, or TURN_SHARED_SECRET")
    if not service.store.shared:
        raise RefreshError("REDIS_URL is not set: running workers keep their own in-process cache, which this command cannot reach")
    over = service.over_limit()
    if over and not service.cache(user, capped=True).providers:
        raise RefreshError("TURN egress is past ICE_EGRESS_LIMIT_GB: Cloudflare is not asked, and no other provider is configured")
    return service.cache(user, capped=over).replace()


def revoke(service: IceService, user: str | None = None) -> Revocation:
    """Revoke a credential at its vendor (Cloudflare, Metered), and make sure it is never served again, whatever else fails.

    In order: a tombstone takes the credential's place in the shared cache (no worker's copy can put
    it back, and it cannot come back when the egress reading drops under the ceiling); a new
    credential is had if one can be (not past the ceiling); every worker re-reads the shared cache
    within LOCAL_STALENESS, so the revocation waits that long; then the vendor revokes it (Twilio cannot:
    it is replaced everywhere and stays valid there until it expires). Without a
    new credential, callers get the next provider or the fallback until one can be had. Raises
    RefreshError when nothing is cached, or when the revocation itself fails (the old one is no
    longer served, but stays valid until it expires).
    """
    whose = "" if user is None else " for that user"
    cache = service.cache(user)  # the scope Cloudflare's credentials live in, past the ceiling too
    try:
        old = cache.store.snapshot().credential
    except StoreUnavailable as exc:
        raise RefreshError(f"shared cache: {exc}") from None
    if old is None or old.username is None:
        raise RefreshError(f"no TURN credential is cached{whose}: nothing to revoke")
    provider = next((p for p in service.providers if p.source == old.source), None)
    if getattr(provider, "standing", False):
        raise RefreshError(
            f"{old.username} is {provider.label}'s standing credential of the app (only METERED_API_KEY is set): it can be "
            "neither revoked nor replaced here; rotate it in Metered's dashboard, or set METERED_SECRET_KEY"
        )
    revocable = provider is not None and getattr(provider, "can_revoke", hasattr(provider, "revoke"))
    label = provider.label if provider is not None else old.source
    try:
        cache.store.revoke(old)
    except StoreUnavailable as exc:
        raise RefreshError(f"shared cache: {exc}; {old.username} was not revoked") from None
    if user is not None and revocable and hasattr(provider, "revoke_label"):
        return _revoke_users(service, cache, provider, old, user)
    new, why_none = None, None
    try:
        new = refresh(service, user)
    except RefreshError as exc:
        why_none = str(exc)
    service.sleep(LOCAL_STALENESS + HANDOVER_MARGIN + (MICRO_CACHE if user is None else 0.0))
    serving = new.source if new is not None else service.fallback_source()
    if not revocable:
        # Twilio has no revocation API: the credential is replaced everywhere, and stays valid there until it expires.
        log.warning(
            "Replaced TURN credential %s%s; %s cannot revoke it: valid there until %s", old.username, whose, label, rfc3339(old.expires_at)
        )
        return Revocation(old, new, why_none, serving, revoked_upstream=False, vendor=label)
    try:
        provider.revoke(old.username)
    except UpstreamError as exc:
        raise RefreshError(
            f"{old.username} is no longer served (callers get {serving}), but revoking it at {label} failed: {exc}; "
            f"it stays valid until {rfc3339(old.expires_at)}"
        ) from None
    if new is not None:
        log.warning("Revoked TURN credential %s%s; serving a new one valid until %s", old.username, whose, rfc3339(new.expires_at))
    else:
        log.warning("Revoked TURN credential %s%s; no new one could be had (%s): serving %s", old.username, whose, why_none, serving)
    return Revocation(old, new, why_none, serving)


def _revoke_users(service: IceService, cache, provider, old: Credential, user: str) -> Revocation:
    """Revoke every credential of ``user`` at a vendor that labels them (Metered), then mint the user a new one.

    In order: (the tombstone is in place) the user's scope cools down, so that no worker mints the
    user a credential the revocation would kill (the user gets the shared credential meanwhile);
    every worker lets go of the old one within LOCAL_STALENESS; the vendor revokes all the user's
    credentials by label, those of earlier windows too; whatever a worker stored before the cool-down
    took is tombstoned; then a new one, issued after the revocation, replaces it (and ends the cool-down).
    """
    try:
        cache.store.start_cooldown(LOCAL_STALENESS + HANDOVER_MARGIN + LABEL_REVOCATION_BUDGET)
    except StoreUnavailable as exc:
        raise RefreshError(f"shared cache: {exc}; {old.username} is no longer served, but nothing was revoked at the vendor") from None
    service.sleep(LOCAL_STALENESS + HANDOVER_MARGIN)
    try:
        provider.revoke_label(user)
    except UpstreamError as exc:
        raise RefreshError(
            f"{old.username} is no longer served, but revoking that user's credentials at {provider.label} failed: {exc}; "
            f"it stays valid until {rfc3339(old.expires_at)}"
        ) from None
    try:
        meanwhile = cache.store.snapshot().credential
        if meanwhile is not None and meanwhile.username is not None:
            cache.store.revoke(meanwhile)  # minted in the instant before the cool-down: dead at the vendor now
    except StoreUnavailable as exc:
        raise RefreshError(f"shared cache: {exc}; that user's credentials were revoked at {provider.label}") from None
    new, why_none = None, None
    try:
        new = refresh(service, user)
    except RefreshError as exc:
        why_none = str(exc)
    serving = new.source if new is not None else service.fallback_source()
    log.warning("Revoked every TURN credential of that user at %s (%s among them); serving %s", provider.label, old.username, serving)
    return Revocation(old, new, why_none, serving)


def status(service: IceService, user: str | None = None) -> Status:
    """Describe providers, the store and what it holds (the shared entry, or ``user``'s)."""
    try:
        snapshot, error = service.cache(user).store.snapshot(), None
        reading = service.egress.reading() if service.egress is not None else None
        failure = service.egress.last_failure() if service.egress is not None else None
    except StoreUnavailable as exc:
        snapshot, error, reading, failure = None, str(exc), None, None
    limit = service.egress.limit_bytes if service.egress is not None else None
    providers = tuple(p.label for p in service.providers)
    outcomes = _provider_outcomes(service) if error is None else ()
    return Status(providers, service.store.shared, error, snapshot, service.per_user, limit, reading, failure, outcomes)


def _provider_outcomes(service: IceService) -> tuple[tuple[str, float, str], ...]:
    """Read each remote provider's last outcome the fleet keeps (app/core/refill.py), when there is more than one."""
    remote = [provider for provider in service.providers if provider.remote]
    outcomes = []
    for provider in remote if len(remote) > 1 else ():
        try:
            data = json.loads(service.policy.shared.read(f"provider:{provider.source}:last") or "null")
            outcomes.append((provider.label, float(data["at"]), str(data["outcome"])))
        except (StoreUnavailable, TypeError, ValueError, KeyError):
            continue
    return tuple(outcomes)
