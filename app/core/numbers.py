"""Whole numbers from outside input: ASCII digits only.

``str.isdigit()`` and ``int()`` accept far more than "0-9": ``"²".isdigit()`` is True and ``int("²")``
raises, while ``int("٣")`` is 3 and ``int(" 1_0 ")`` is 10. Headers arrive as latin-1 text, so a
``²`` (byte 0xB2) in one reached ``int()`` and answered a 500. Every number read from a request,
an upstream answer or a URL goes through here instead.

Pure: no I/O.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"[0-9]+")


def parse_digits(text: str | bytes | None, max_digits: int = 18) -> int | None:
    """Return the number ``text`` spells in 1 to ``max_digits`` ASCII digits, else None."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if not isinstance(text, str) or len(text) > max_digits or not _DIGITS.fullmatch(text):
        return None
    return int(text)
