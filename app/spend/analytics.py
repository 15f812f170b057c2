"""Cloudflare's GraphQL Analytics API: month-to-date TURN egress of one TURN key, in bytes.

One query, explicit timeouts, a validated answer. GraphQL errors (HTTP 200 with an ``errors``
array), HTTP errors, garbage and timeouts all raise ``UsageUnavailable`` with a one-line message
that never holds the analytics token (it travels only in the Authorization header).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import requests

CONNECT_TIMEOUT = 2.0  # seconds to open the connection
READ_TIMEOUT = 8.0  # seconds between bytes of the answer: analytics queries are slower than generate
MAX_ANSWER_BYTES = 256 * 1024
DATASET = "callsTurnUsageAdaptiveGroups"
GROUPS_LIMIT = 10_000  # without dimensions the answer is one group; the limit is for the schema's sake


class UsageUnavailable(Exception):
    """No month-to-date reading could be had."""


def month_start(now: float) -> str:
    """Return the first day of the UTC month of ``now``, as the Date filter wants it: YYYY-MM-01."""
    return datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-01")


def egress_query(account_id: str, key_id: str, since: str) -> str:
    """Build the query: egress summed over the groups of one account and TURN key since ``since``."""
    # Inline values, quoted as JSON strings (which GraphQL string literals accept); config checks their characters.
    account, key, date = json.dumps(account_id), json.dumps(key_id), json.dumps(since)
    groups = f"{DATASET}(filter: {{keyId: {key}, date_geq: {date}}}, limit: {GROUPS_LIMIT}) {{ sum {{ egressBytes }} }}"
    return f"query {{ viewer {{ accounts(filter: {{accountTag: {account}}}) {{ {groups} }} }} }}"


class AnalyticsClient:
    """Ask Cloudflare's analytics for a TURN key's month-to-date egress."""

    def __init__(
        self,
        url: str,
        token: str,
        account_id: str,
        key_id: str,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
    ):
        """Keep the settings; the session is injectable for tests."""
        self._url = url
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._account_id, self._key_id = account_id, key_id
        self._session = session or requests.Session()
        self._timeout = timeout

    def __repr__(self) -> str:
        """Show the endpoint, never the token."""
        return f"AnalyticsClient({self._url!r})"

    def counts(self) -> str:
        """Name what a reading counts: the account and the TURN key (no secret), so a rotated key or account starts afresh."""
        return f"{self._account_id}/{self._key_id}"

    def egress_bytes(self, now: float) -> int:
        """Return the egress since the first day of ``now``'s UTC month; raise UsageUnavailable."""
        query = egress_query(self._account_id, self._key_id, month_start(now))
        try:
            response = self._session.post(self._url, json={"query": query}, headers=self._headers, timeout=self._timeout)
        except requests.Timeout:
            raise UsageUnavailable(f"the analytics API did not answer within {sum(self._timeout):g} s") from None
        except requests.RequestException as exc:
            raise UsageUnavailable(f"could not reach the analytics API ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise UsageUnavailable(f"the analytics API answered {response.status_code}{_first_error(response)}")
        try:
            payload = response.json() if len(response.content) <= MAX_ANSWER_BYTES else None
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise UsageUnavailable("the analytics API answered something that is not a JSON object")
        return _egress(payload)


def _first_error(response: requests.Response) -> str:
    """Return ": <the first GraphQL error's message>" of an error answer (an unknown field names itself), or nothing."""
    try:
        message = response.json()["errors"][0]["message"] if len(response.content) <= MAX_ANSWER_BYTES else None
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
    text = "".join(character if character.isprintable() else " " for character in str(message)[:160])
    return f": {text}" if message else ""


def _bytes(value: object) -> int:
    """Read one egressBytes figure: a JSON number (or null, as zero); raise ValueError on anything else."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a number")
    return int(value)


def _egress(payload: dict) -> int:
    """Sum egressBytes over the groups of the answer; raise UsageUnavailable on errors or another shape."""
    errors = payload.get("errors")
    if errors:
        first = errors[0].get("message") if isinstance(errors, list) and isinstance(errors[0], dict) else None
        raise UsageUnavailable(f"the analytics API answered an error: {str(first or errors)[:160]}".replace("\n", " "))
    try:
        accounts = payload["data"]["viewer"]["accounts"]
        if not accounts:
            raise UsageUnavailable("the analytics API knows no such account (check CLOUDFLARE_ACCOUNT_ID and the token's access)")
        groups = accounts[0][DATASET] or []
        total = sum(_bytes(group["sum"]["egressBytes"]) for group in groups)
    except (KeyError, IndexError, TypeError, ValueError):
        raise UsageUnavailable("the analytics API answered without the egress figure") from None
    if total < 0:
        raise UsageUnavailable("the analytics API answered a negative egress figure")
    return total
