"""What the core asks of its adapters: credential providers, the store's one-round-trip read, and a metrics recorder.

The core imports no adapter: the factory hands it a store (Redis or memory), providers
(Cloudflare, a TURN shared secret) and a recorder (Prometheus), each of these shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from app.core.ice import Credential, Revoked

__all__ = ["Issued", "NullRecorder", "Provider", "Recorder", "Revoked", "Snapshot"]


@dataclass(frozen=True)
class Issued:
    """A remote provider's answer with the life its vendor granted: the credential lives ``ttl`` seconds, not what was asked."""

    ice_servers: list[dict]
    ttl: int


class Provider(Protocol):
    """A source of TURN credentials.

    A remote one (Cloudflare) is asked through the shared cache, once per window fleet-wide, under
    its lock and cool-down: ``issue``. A local one (a TURN shared secret) mints an HMAC itself, in
    every process, with nothing to share, lock or cool down: ``mint``.
    """

    source: str  # the ``source`` field of the answer
    label: str  # the name in log lines
    remote: bool

    def issue(self, ttl: int, user: str | None = None, timeout: tuple[float, float] | None = None) -> list[dict] | Issued:
        """Return ICE servers whose credential lives ``ttl`` seconds (or an Issued with the life granted); raise UpstreamError.

        ``timeout`` (connect, read): this call's share of the refill's budget (None: the provider's own timeouts).
        """

    def mint(self, expires_at: int, user: str | None = None) -> list[dict]:
        """Return ICE servers whose credential expires at ``expires_at`` (local)."""


@dataclass(frozen=True)
class Snapshot:
    """What the store holds for a scope, read at once: the refill decides on all of it together."""

    credential: Credential | None  # the scope's one record, whatever its window (callers check)
    revoked: Revoked | None  # or, after a revocation, its tombstone
    cooldown: float  # seconds left of the upstream cool-down (0: none)
    failures: int  # upstream failures in a row


class Recorder(Protocol):
    """Where the core reports what happened (the web layer's is Prometheus); every label value is a fixed word."""

    def answered(self, source: str) -> None:
        """Count one answer, by source: cloudflare, turn-secret, static, stun-only."""

    def cache_event(self, event: str) -> None:
        """Count a cache event: hit, miss, stale, lock_wait, refresh, deferred or bounded.

        deferred and bounded: a user's own credential could not be had (the mint budget, a refusing upstream; or
        ICE_MAX_USER_RECORDS): the shared one answered.
        """

    def upstream(self, outcome: str, seconds: float, provider: str = "") -> None:
        """Count one upstream call by outcome (success, rejected, rate_limited, invalid, unavailable) and provider; time it."""

    def credential(self, refresh_at: float, expires_at: float) -> None:
        """Say when a credential this process now holds reaches its refresh point and expires."""

    def store_local(self, local: bool) -> None:
        """Say whether this process serves from its own store because the shared one fails."""

    def egress(self, egress_bytes: int | None, limit_bytes: int, read_at: float | None = None, interval: float | None = None) -> None:
        """Show the month's TURN egress (None: no reading this month) against ICE_EGRESS_LIMIT_GB.

        ``read_at``: when the last good reading of this key was taken (None: never); ``interval``: ICE_USAGE_CHECK_INTERVAL.
        """

    def usage_reading(self, outcome: str) -> None:
        """Count one query of the analytics API by outcome: success, failed."""

    def refused(self, status: int) -> None:
        """Count one refusal of a credential route by status: 401, 403, 429."""


class NullRecorder(Recorder):
    """A recorder that records nothing (tests, the CLI): every method is the protocol's own, which does nothing."""
