"""TURN shared-secret provider: the TURN REST API credential (draft-uberti-behave-turn-rest-00).

This is what coturn verifies with ``use-auth-secret`` / ``static-auth-secret`` (as Synapse and
Jitsi use it): username ``"{expiry}:{user}"``, password ``base64(HMAC-SHA1(secret, username))``.
Minted locally: no upstream call, nothing that can fail, nothing to cool down.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

USER = "ice-servers"  # the user part of the shared credential (one for all callers in a window)


def rest_credential(secret: str, expiry: int, user: str = USER) -> tuple[str, str]:
    """Return (username, password) valid until the Unix time ``expiry``."""
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


class TurnSecretProvider:
    """Mint TURN REST credentials for your own TURN servers (coturn and the like)."""

    source = "turn-secret"
    label = "TURN shared secret"
    remote = False

    def __init__(self, secret: str, urls: tuple[str, ...]):
        """Keep the secret and the URLs (port 53 already dropped by the settings)."""
        self._secret = secret
        self._stun_urls = [u for u in urls if u.lower().startswith(("stun:", "stuns:"))]
        self._turn_urls = [u for u in urls if u.lower().startswith(("turn:", "turns:"))]

    def __repr__(self) -> str:
        """Show the URLs, never the secret."""
        return f"TurnSecretProvider({self._turn_urls!r})"

    def mint(self, expires_at: int, user: str | None = None) -> list[dict]:
        """Return ICE servers with a credential that the TURN server accepts until the Unix time ``expires_at``.

        ``user`` (an opaque identifier) becomes the username's user part, so the TURN server's logs
        tell users apart. The same arguments mint the same credential, in every process.
        """
        username, password = rest_credential(self._secret, expires_at, user or USER)
        servers = [{"urls": list(self._stun_urls)}] if self._stun_urls else []
        return [*servers, {"urls": list(self._turn_urls), "username": username, "credential": password}]
