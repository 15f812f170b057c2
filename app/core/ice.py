"""Pure ICE logic: the credential record and response bodies.

Nothing here does I/O or reads a clock: time comes in as a parameter, so expiry arithmetic is
tested without sleeping.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from app.config.ice_servers import is_turn_with_credential, parse_ice_servers


@dataclass(frozen=True)
class Credential:
    """A TURN credential as served: its ICE servers, where it came from, and its life span.

    ``refresh_at`` ends the cache window: after it the credential is only served when no newer
    one can be had (stale-if-error), and never after ``expires_at``.
    """

    ice_servers: tuple[dict, ...]
    source: str
    issued_at: float
    refresh_at: float
    expires_at: float

    @property
    def username(self) -> str | None:
        """Return the TURN username (Cloudflare revokes by it)."""
        return next((s["username"] for s in self.ice_servers if is_turn_with_credential(s)), None)

    def is_valid(self, now: float) -> bool:
        """Tell whether the credential may still be handed out at ``now``: a whole second left, so ``ttl`` >= 1."""
        return self.expires_at - now >= 1

    def is_fresh(self, now: float) -> bool:
        """Tell whether ``now`` is inside the cache window."""
        return now < min(self.refresh_at, self.expires_at)

    def to_json(self) -> str:
        """Serialize for the shared cache."""
        return json.dumps(
            {
                "source": self.source,
                "iceServers": list(self.ice_servers),
                "issuedAt": self.issued_at,
                "refreshAt": self.refresh_at,
                "expiresAt": self.expires_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> Credential | None:
        """Parse a cache entry; anything that does not parse or lacks a field is a miss (None)."""
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            credential = cls(
                ice_servers=tuple(parse_ice_servers(data["iceServers"], require_credential=False)),
                source=str(data["source"]),
                issued_at=float(data["issuedAt"]),
                refresh_at=float(data["refreshAt"]),
                expires_at=float(data["expiresAt"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if not all(math.isfinite(at) for at in (credential.issued_at, credential.refresh_at, credential.expires_at)):
            return None
        return credential


@dataclass(frozen=True)
class Revoked:
    """A scope's record after revoke-turn: the revoked credential, and nothing issued before it, may be served or stored there."""

    username: str
    expires_at: float  # the revoked credential's: the tombstone lives as long as it could be used
    issued_at: float | None = None  # the revoked credential's; None in a tombstone written before records were ordered by issue

    def to_json(self) -> str:
        """Serialize for the shared cache."""
        return json.dumps({"revoked": self.username, "issuedAt": self.issued_at, "expiresAt": self.expires_at}, separators=(",", ":"))

    def blocks(self, credential: Credential) -> bool:
        """Tell whether ``credential`` is the revoked one, or one issued no later than it (an old tombstone: its own only)."""
        if credential.username == self.username:
            return True
        return self.issued_at is not None and credential.issued_at <= self.issued_at


def keeps_place(held: Credential | Revoked, credential: Credential) -> bool:
    """Tell whether the record ``held`` stays against ``credential`` (app/store/redis.py's put-if-newer says the same in Lua).

    Records are ordered by when they were issued, not by when they expire: a shorter grant (a
    lowered TURN_CREDENTIAL_TTL, another vendor) replaces an older, longer one, while a late writer
    never replaces a credential issued after its own; a tombstone wins a tie (the revoked credential,
    put back by a worker's copy, was issued exactly then). A tombstone of before this order keeps out its own
    credential only: compared by expiry, it would refuse every shorter grant after a lowered lifetime.
    """
    if isinstance(held, Revoked) and held.issued_at is None:
        return held.username == credential.username
    return held.issued_at > credential.issued_at or (held.issued_at == credential.issued_at and isinstance(held, Revoked))


def parse_record(raw: str | bytes | None) -> Credential | Revoked | None:
    """Parse a scope's record: a credential, a revocation's tombstone, or None (a miss: nothing, or junk)."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        if isinstance(data, dict) and "revoked" in data:
            issued_at = data.get("issuedAt")
            revoked = Revoked(str(data["revoked"]), float(data["expiresAt"]), None if issued_at is None else float(issued_at))
            finite = math.isfinite(revoked.expires_at) and (revoked.issued_at is None or math.isfinite(revoked.issued_at))
            return revoked if finite else None
    except (ValueError, KeyError, TypeError):
        return None
    return Credential.from_json(raw)


def new_credential(ice_servers: list[dict], source: str, issued_at: float, credential_ttl: int, cache_ttl: int) -> Credential:
    """Build a credential issued at ``issued_at`` (the time the request was sent, to err early)."""
    return Credential(
        ice_servers=tuple(ice_servers),
        source=source,
        issued_at=issued_at,
        refresh_at=issued_at + cache_ttl,
        expires_at=issued_at + credential_ttl,
    )


def rfc3339(timestamp: float) -> str:
    """Format a Unix time as RFC 3339 UTC with a Z, to the second."""
    return datetime.fromtimestamp(int(timestamp), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def answer_body(ice_servers: list[dict] | tuple[dict, ...], source: str, expires_at: float, now: float) -> dict:
    """Build the ``GET /api/ice-servers`` body: ``ttl`` counts the seconds left from ``now``."""
    return {
        "iceServers": list(ice_servers),
        "ttl": max(0, int(expires_at - now)),
        "expiresAt": rfc3339(expires_at),
        "source": source,
    }


def legacy_body(ice_servers: list[dict] | tuple[dict, ...]) -> dict:
    """Build the first guide's single-object form: every URL in one entry with one credential.

    Only the first entry carrying a credential lends its username and password; URLs of other
    credentialed entries would be handed the wrong password, so they are left out.
    """
    with_credential = next((s for s in ice_servers if "username" in s and "credential" in s), None)
    urls = [u for s in ice_servers if "username" not in s for u in s["urls"]]
    merged: dict = {"urls": urls}
    if with_credential:
        merged = {
            "urls": urls + with_credential["urls"],
            "username": with_credential["username"],
            "credential": with_credential["credential"],
        }
    return {"iceServers": merged}
