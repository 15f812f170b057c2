"""Operator actions on the shared cache: refresh a credential now, revoke one, describe what is held.

Each takes the running configuration's IceService and acts on one scope: the shared credential,
or one user's (``user``: the opaque identifier of a verified subject). Failures raise
RefreshError with a one-line message for the operator; no secret is ever in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.core.cache import LOCAL_STALENESS
from app.core.errors import RefreshError, StoreUnavailable, UpstreamError
from app.core.ice import Credential, rfc3339
from app.core.ports import Snapshot
from app.core.service import IceService
from app.spend.ceiling import Reading

log = logging.getLogger("ice_servers")

# Beyond LOCAL_STALENESS, for the time a request already past its look at the cache takes to answer.
HANDOVER_MARGIN = 0.5


@dataclass(frozen=True)
class Status:
    """What an operator asks about: where credentials come from and what the cache holds."""

    providers: tuple[str, ...]  # labels, in order
    shared: bool  # Redis configured
    store_error: str | None  # why the store did not answer, if it did not
    snapshot: Snapshot | None  # None when the store did not answer
    per_user: bool = False  # one credential per user (the snapshot is the shared one, or the user's)
    egress_limit: int | None = None  # ICE_EGRESS_LIMIT_GB in bytes, when the ceiling is on...
    egress: Reading | None = None  # ...and the fleet's last reading, if any


def refresh(service: IceService, user: str | None = None) -> Credential:
    """Fetch a credential now, from the first provider that gives one, into the shared cache.

    The cool-down is ignored (an operator asked) and ended by a success. Raises RefreshError.
    """
    if not service.providers:
        raise RefreshError("no TURN provider configured: set CLOUDFLARE_TURN_TOKEN_ID and CLOUDFLARE_API_TOKEN, or TURN_SHARED_SECRET")
    if not service.store.shared:
        raise RefreshError("REDIS_URL is not set: running workers keep their own in-process cache, which this command cannot reach")
    over = service.over_limit()
    if over and not service.cache(user, capped=True).providers:
        raise RefreshError("TURN egress is past ICE_EGRESS_LIMIT_GB: Cloudflare is not asked, and no other provider is configured")
    return service.cache(user, capped=over).replace()


def revoke(service: IceService, user: str | None = None) -> tuple[Credential, Credential]:
    """Replace a credential in the shared cache, then revoke the old one upstream.

    A new credential is had first: when none can be, the old one is kept (not revoked) and
    RefreshError says so. Every worker takes the new one at its next look at the shared cache
    (put-if-newer: a worker's older copy can never be put back over it), at most LOCAL_STALENESS
    later; the revocation waits that long, so that when this returns no worker hands out the old
    credential and a page's next fetch gets the new one. Returns (old, new).
    """
    whose = "" if user is None else " for that user"
    try:
        old = service.cache(user).store.snapshot().last
    except StoreUnavailable as exc:
        raise RefreshError(f"shared cache: {exc}") from None
    if old is None or old.username is None:
        raise RefreshError(f"no TURN credential is cached{whose}: nothing to revoke")
    provider = next((p for p in service.providers if p.source == old.source), None)
    if provider is None or not hasattr(provider, "revoke"):
        raise RefreshError(f"credentials from {old.source} cannot be revoked upstream; use refresh-turn to replace it")
    try:
        new = refresh(service, user)
    except RefreshError as exc:
        raise RefreshError(f"no new credential could be had, so {old.username} is kept and was not revoked: {exc}") from None
    service.sleep(LOCAL_STALENESS + HANDOVER_MARGIN)
    try:
        provider.revoke(old.username)
    except UpstreamError as exc:
        raise RefreshError(f"a new credential is stored, but revoking {old.username} failed: {exc}") from None
    log.warning("Revoked TURN credential %s%s; serving a new one valid until %s", old.username, whose, rfc3339(new.expires_at))
    return old, new


def status(service: IceService, user: str | None = None) -> Status:
    """Describe providers, the store and what it holds (the shared entry, or ``user``'s)."""
    try:
        snapshot, error = service.cache(user).store.snapshot(), None
        reading = service.egress.reading() if service.egress is not None else None
    except StoreUnavailable as exc:
        snapshot, error, reading = None, str(exc), None
    limit = service.egress.limit_bytes if service.egress is not None else None
    return Status(tuple(p.label for p in service.providers), service.store.shared, error, snapshot, service.per_user, limit, reading)
