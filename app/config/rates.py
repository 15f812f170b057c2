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


def _nginx_milli(count: int, seconds: int) -> int:
    """Return a rate as nginx keeps it: whole thousandths of a request per second (ngx_http_limit_req_zone)."""
    return count * 1000 // seconds


def _nginx_rate(rate: Rate) -> str | None:
    """Return the nginx rate nearest ``rate``: r/s when exact, else r/m; None when not a whole number a minute."""
    if rate.amount % rate.period == 0:
        return f"{rate.amount // rate.period}r/s"
    per_minute = rate.amount * 60 / rate.period
    return f"{int(per_minute)}r/m" if per_minute.is_integer() else None


def nginx_twin_problem(rate_limit: str | None, nginx_rate: str, limit_lines: list[str]) -> str | None:
    """Compare ICE_RATE_LIMIT with the shipped nginx site's limit in front of its cache; None: they count alike.

    ``nginx_rate`` is limit_req_zone's ``rate=`` ("600r/m", "10r/s"); ``limit_lines`` the parameters of each distinct
    ``limit_req`` line of the zone ("zone=ice_servers_per_address burst=599 nodelay"). The twin of "N per P seconds"
    (a burst of N, then one every P/N) is N per P at nginx's granularity, ``burst=N-1`` (none for 1: the request the
    rate lets by is not part of nginx's burst) and ``nodelay`` (else nginx queues what the app refuses). A limit
    nginx cannot write (several rates, or not a whole number a minute) is named as such.
    """
    match = re.fullmatch(r"([0-9]{1,9})r/([sm])", nginx_rate)
    if not match:
        return f"the nginx site's rate={nginx_rate} is not like 600r/m or 10r/s: ICE_RATE_LIMIT's twin was not checked"
    limits = set()
    for line in limit_lines:
        words = line.split()
        burst = next((word.removeprefix("burst=") for word in words if word.startswith("burst=")), "0")
        if not re.fullmatch(r"[0-9]{1,9}", burst):  # ASCII digits only (str.isdigit takes '٥' and '²')
            return f"the nginx site's limit_req line '{line[:80]}' has no whole burst=: ICE_RATE_LIMIT's twin was not checked"
        limits.add((int(burst), "nodelay" in words))
    if len(limits) != 1:
        return "the nginx site's limit_req lines for its zone differ (or there is none): make both alike, then reload nginx"
    ((burst, nodelay),) = limits
    site = f"rate={nginx_rate} burst={burst}" + (" nodelay" if nodelay else "")
    if rate_limit is None:
        return (
            f"ICE_RATE_LIMIT=0 turns the app's limit off, but the nginx site still counts {site} in front of its cache: "
            "remove its limit_req lines too if you mean no limit at all"
        )
    rates = parse_rates(rate_limit)
    twin = _nginx_rate(rates[0]) if len(rates) == 1 else None
    if twin is None:
        return (
            f"ICE_RATE_LIMIT={rate_limit} has no nginx twin (one rate, a whole number a minute); the nginx site counts "
            f"{site} in front of its cache: write there the limit you mean for the answers it keeps"
        )
    amount = rates[0].amount
    count, unit = int(match.group(1)), 60 if match.group(2) == "m" else 1
    twin_count, twin_unit = int(twin[:-3]), 60 if twin.endswith("m") else 1
    if _nginx_milli(count, unit) == _nginx_milli(twin_count, twin_unit) and burst == amount - 1 and nodelay:
        return None
    wanted = f"rate={twin}" + (f" burst={amount - 1}" if amount > 1 else " (no burst=)") + " nodelay"
    return (
        f"the nginx site counts {site} in front of its cache, but ICE_RATE_LIMIT={rate_limit} means {wanted}: "
        "edit limit_req_zone and both limit_req lines of ice-servers.conf, then reload nginx"
    )
