"""The URL policy: which STUN/TURN URLs an answer carries, whatever provider made it.

Browsers slow down with many ICE URLs (Firefox warns at five), so an answer carries at most
ICE_MAX_URLS, all its ICE servers together. The choice goes by scheme, transport and port only,
never by host name, so a self-hosted coturn's URLs are treated like Cloudflare's:

1. TURN URLs of a transport not in ICE_TURN_TRANSPORTS are dropped (udp: ``turn:`` over UDP,
   tcp: ``turn:...?transport=tcp``, tls: ``turns:``); port 53 never comes this far.
2. An answer already within the cap is served as it is.
3. Otherwise one URL of each served transport the provider offers, best port first, then one
   STUN URL, then the rest in the provider's order, until the cap. With a cap below the number
   of transports, UDP comes first (the best calls), then TLS (the most firewalls), then TCP.

Port preference, by what passes restrictive firewalls: TCP and TLS on 443 (HTTPS, open almost
everywhere), then 80 (HTTP), then the standard 3478/5349; UDP on 3478 (the standard port, which
most NATs pass) before 443 and 80.

Pure: no I/O, no Flask.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.core.numbers import parse_digits

TRANSPORTS = ("udp", "tcp", "tls")
TRANSPORT_ORDER = ("udp", "tls", "tcp")  # who goes first when the cap cannot fit them all
PORT_PREFERENCE = {"udp": (3478, 443, 80), "tcp": (443, 80, 3478), "tls": (443, 5349)}
DEFAULT_PORTS = {"stun": 3478, "stuns": 5349, "turn": 3478, "turns": 5349}


def classify(url: str) -> tuple[str, int]:
    """Return (kind, port): kind is stun, udp, tcp or tls."""
    scheme, _, rest = url.partition(":")
    scheme = scheme.lower()
    address, _, query = rest.partition("?")
    port = DEFAULT_PORTS.get(scheme, 0)
    if address.startswith("["):  # [IPv6]:port
        _, _, tail = address.partition("]")
        given = parse_digits(tail[1:], max_digits=5) if tail.startswith(":") else None
    else:
        given = parse_digits(address.rpartition(":")[2], max_digits=5) if ":" in address else None
    port = given if given is not None else port
    if scheme in ("stun", "stuns"):
        return "stun", port
    if scheme == "turns":
        return "tls", port
    transport = next((value.lower() for name, value in _params(query) if name.lower() == "transport"), "udp")
    return ("tcp" if transport == "tcp" else "udp"), port


def _params(query: str):
    for pair in filter(None, query.split("&")):
        name, _, value = pair.partition("=")
        yield name, value


class UrlPolicy:
    """Trim ICE servers to the served transports and at most ``max_urls`` URLs."""

    def __init__(self, transports: Sequence[str] = TRANSPORTS, max_urls: int = 4):
        """Keep the settings (validated by config)."""
        self.transports = tuple(transports)
        self.max_urls = max_urls

    def apply(self, ice_servers: Sequence[dict]) -> tuple[dict, ...]:
        """Return the servers with only the chosen URLs, in their order; entries left empty are dropped."""
        urls = [(index, url, *classify(url)) for index, server in enumerate(ice_servers) for url in server["urls"]]
        served = [item for item in urls if item[2] == "stun" or item[2] in self.transports]
        if len(served) <= self.max_urls:
            chosen = served
        else:
            chosen = self._choose(served)
        keep = {(index, url) for index, url, _, _ in chosen}
        result = []
        for index, server in enumerate(ice_servers):
            kept = [url for url in server["urls"] if (index, url) in keep]
            if kept:
                result.append({**server, "urls": kept})
        return tuple(result)

    def _choose(self, served: list[tuple]) -> list[tuple]:
        """Pick one URL per transport (best port first), one STUN URL, then the rest in order, up to the cap."""
        picks: list[tuple] = []
        for transport in TRANSPORT_ORDER:
            candidates = [item for item in served if item[2] == transport]
            if candidates and transport in self.transports:
                picks.append(min(candidates, key=lambda item: _rank(transport, item[3])))
        stun = [item for item in served if item[2] == "stun"]
        if stun:
            picks.append(min(stun, key=lambda item: item[3] != 3478))
        picks += [item for item in served if item not in picks]
        return picks[: self.max_urls]


def _rank(transport: str, port: int) -> int:
    """Rank a port for a transport: lower is better; unknown ports after the preferred ones."""
    preferred = PORT_PREFERENCE[transport]
    return preferred.index(port) if port in preferred else len(preferred)
