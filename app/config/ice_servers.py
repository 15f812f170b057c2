"""The grammar of ICE servers: what an RTCIceServer list and its URLs may be.

The TURN_SERVERS and TURN_URLS settings and every provider's answer are read by it alike.

Browsers block port 53; ICE then stalls on it when trickle ICE is off. The port is matched exactly:
":53" followed by "?" or the end (a substring test on ":53" would also drop ":5349").

Pure: no I/O.
"""

from __future__ import annotations

import re

ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")

TURN_SCHEMES = ("turn:", "turns:")

# Browsers block port 53; ICE then stalls on it when trickle ICE is off. Match the port exactly:
# ":53" followed by "?" or the end. A substring test on ":53" would also drop ":5349".
_PORT_53 = re.compile(r"^[a-z]+:(\[[^\]]*\]|[^:?\[\]]*):53(\?|$)", re.IGNORECASE)


def is_blocked_url(url: str) -> bool:
    """Tell whether an ICE URL uses port 53, which browsers refuse."""
    return bool(_PORT_53.match(url))


def parse_ice_servers(payload: object, require_credential: bool = True) -> list[dict]:
    """Validate a list (or the older single object) of RTCIceServer dicts and drop port-53 URLs.

    Returns clean dicts holding only ``urls`` (a list) and, when present, ``username`` and
    ``credential``. Raises ``ValueError`` with a one-line reason when the shape is wrong, or
    when ``require_credential`` is set and no TURN entry with a username and credential is left.
    """
    entries = [payload] if isinstance(payload, dict) else payload
    if not isinstance(entries, list) or not entries:
        raise ValueError("expected a non-empty list of ICE server objects")
    servers = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("every ICE server must be an object")
        urls = entry.get("urls")
        urls = [urls] if isinstance(urls, str) else urls
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u for u in urls):
            raise ValueError("every ICE server needs 'urls': a URL or a non-empty list of URLs")
        bad = [u for u in urls if not u.lower().startswith(ICE_SCHEMES)]
        if bad:  # never quoted: a vendor's garbage, or TURN_SERVERS (a secret), may carry a key in it
            raise ValueError(f"URL {urls.index(bad[0]) + 1} of an ICE server's 'urls' is not a stun:, stuns:, turn: or turns: URL")
        server: dict = {"urls": [u for u in urls if not is_blocked_url(u)]}
        for name in ("username", "credential"):
            if name in entry:
                if not isinstance(entry[name], str) or not entry[name]:
                    raise ValueError(f"'{name}' must be a non-empty string")
                server[name] = entry[name]
        if ("username" in server) != ("credential" in server):
            raise ValueError("an ICE server needs both 'username' and 'credential', or neither")
        if server["urls"]:
            servers.append(server)
    if require_credential and not any(is_turn_with_credential(s) for s in servers):
        raise ValueError("no TURN server with a username and credential in the answer")
    if not servers:
        raise ValueError("no usable URL left after dropping port 53")
    return servers


def is_turn_with_credential(server: dict) -> bool:
    """Tell whether a server entry is a TURN server carrying its credential."""
    has_turn = any(u.lower().startswith(TURN_SCHEMES) for u in server["urls"])
    return has_turn and "username" in server and "credential" in server
