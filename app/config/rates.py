"""The grammar of ICE_RATE_LIMIT: "600 per minute", "10/second; 100 per 5 minutes", as the limits library wrote them.

Every form that library took is taken: "N per UNIT" or "N/UNIT", an optional multiple
("100 per 5 minutes"), plurals, any case, several limits separated by ",", ";" or "|". Its unit
lengths are kept too: a month is 30 days and a year 12 of those. The one form refused is a limit
of 0 ("0 per minute" would refuse every request; "0" alone turns the limit off).

Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400, "month": 30 * 86_400, "year": 12 * 30 * 86_400}
_ONE = re.compile(r"[ \t]*([0-9]{1,9})[ \t]*(?:/|per)[ \t]*([0-9]{1,9})?[ \t]*([A-Za-z]+?)s?[ \t]*", re.IGNORECASE)
_SEPARATORS = re.compile(r"[,;|]")


@dataclass(frozen=True)
class Rate:
    """``amount`` requests per ``period`` seconds: a burst of ``amount``, then one every period / amount."""

    amount: int
    period: int  # seconds
    text: str  # as written, for messages

    @property
    def interval_ms(self) -> float:
        """Return the time one request "costs": the period divided by the amount, in milliseconds."""
        return self.period * 1000 / self.amount


def parse_rates(value: str) -> tuple[Rate, ...]:
    """Parse ICE_RATE_LIMIT's limits; raise ValueError with what is wrong."""
    rates = []
    for part in _SEPARATORS.split(value):
        match = _ONE.fullmatch(part)
        unit = match and match.group(3).lower()
        if not match or unit not in UNITS:
            raise ValueError(f"{part.strip()[:40]!r} is not like '600 per minute'")
        amount, multiple = int(match.group(1)), int(match.group(2) or 1)
        if amount == 0 or multiple == 0:
            raise ValueError(f"{part.strip()[:40]!r} would refuse every request (set ICE_RATE_LIMIT=0 to turn the limit off)")
        rates.append(Rate(amount, multiple * UNITS[unit], part.strip()))
    return tuple(rates)
