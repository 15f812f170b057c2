"""Who the client is: its address behind trusted proxies only, and the key the rate limit counts it under.

``X-Forwarded-For`` is a list anyone can write. It counts only when the peer that sent it is a
trusted proxy (ICE_TRUSTED_PROXIES: by default 127.0.0.1 and ::1, where the shipped nginx runs);
the list is then read from the right, each trusted proxy naming the one before it, and the first
address that is not a trusted proxy is the client. Any other peer is its own address, whatever it
sends, so a client reaching gunicorn directly (a container port, a host bound to 0.0.0.0) cannot
pick its rate-limit key, or pass the /metrics allowlist.

IPv6 callers are counted by their /64: one subscriber or host usually has a whole /64, and a
per-address key would hand it 2^64 of them.

Pure: no I/O, no Flask.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from app.core.numbers import parse_digits

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
UNKNOWN = "unknown"  # the key of a peer without a usable address (a Unix socket)


def parse_address(text: str | None) -> Address | None:
    """Parse an IP address (ASCII only, as ipaddress does), IPv4-mapped IPv6 as IPv4, a scope id dropped; None if it is none."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_hop(text: str) -> Address | None:
    """Parse one X-Forwarded-For entry: an address, or one with the port some load balancers add (``a.b.c.d:port``, ``[v6]:port``)."""
    text = text.strip()
    host, colon, port = text.rpartition(":")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not (rest.startswith(":") and parse_digits(rest[1:], 5) is not None):
            return None
        return parse_address(host)
    if colon and host.count(".") == 3 and parse_digits(port, 5) is not None:
        return parse_address(host)
    return parse_address(text)


def parse_networks(items: Sequence[str]) -> tuple[Network, ...]:
    """Parse addresses or CIDR networks (validated by the settings)."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def trusted(address: Address | None, networks: Sequence[Network]) -> bool:
    """Tell whether ``address`` lies in one of ``networks``."""
    return address is not None and any(address.version == network.version and address in network for network in networks)


def client_address(peer: str | None, forwarded_for: str | None, proxies: Sequence[Network]) -> str | None:
    """Return the client's address: ``peer``'s own, or, from a trusted proxy, the nearest untrusted one it forwards for."""
    nearest = parse_address(peer)
    if nearest is None:
        return peer or None
    if not forwarded_for or not trusted(nearest, proxies):
        return str(nearest)
    for entry in reversed(forwarded_for.split(",")):
        hop = parse_hop(entry)
        if hop is None:
            break  # a malformed entry: the proxy that wrote it is as far as the chain can be trusted
        nearest = hop
        if not trusted(hop, proxies):
            break
    return str(nearest)


def rate_key(address: str | None) -> str:
    """Return the key the rate limit counts ``address`` under: the address, or for IPv6 its /64."""
    parsed = parse_address(address)
    if parsed is None:
        return UNKNOWN
    if parsed.version == 6:
        return f"{ipaddress.IPv6Network((int(parsed) >> 64 << 64, 64))}"
    return str(parsed)


def address_allowed(address: str | None, networks: tuple[str, ...]) -> bool:
    """Tell whether an IP address lies in one of ``networks``."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(network, strict=False) for network in networks)
