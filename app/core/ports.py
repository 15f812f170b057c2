"""What the core asks of its adapters: a TURN credential provider, and what the shared store reads at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from app.core.ice import Credential


class Provider(Protocol):
    """A source of TURN credentials: Cloudflare, or a TURN shared secret."""

    source: str  # the ``source`` field of the answer
    label: str  # the name in log lines
    remote: bool  # asks an upstream (locked, cooled down) rather than minting locally

    def issue(self, ttl: int, user: str | None = None) -> list[dict]:
        """Return ICE servers whose credential lives ``ttl`` seconds, for ``user`` if given; raise UpstreamError."""


@dataclass(frozen=True)
class Snapshot:
    """What the store holds, read at once: the refill decides on all of it together."""

    fresh: Credential | None  # inside its cache window
    last: Credential | None  # the newest stored, whatever its window
    cooldown: float  # seconds left of the upstream cool-down (0: none)
    failures: int  # upstream failures in a row
