"""Which pages may ask (origin mode): the request's Origin, or its Referer's origin, against CORS_ORIGINS.

Pure logic: no Flask, no I/O.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def origin_allowed(origin: str | None, referer: str | None, allowed: tuple[str, ...]) -> bool:
    """Tell whether the request's Origin (or, without one, its Referer's origin) is in ``allowed``."""
    candidate = origin if origin and origin != "null" else _origin_of(referer)
    return candidate is not None and candidate.rstrip("/").lower() in {a.lower() for a in allowed}


def _origin_of(url: str | None) -> str | None:
    """Return the scheme://host[:port] of a URL, or None."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else None
