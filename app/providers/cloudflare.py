"""Cloudflare Realtime TURN client: one call, explicit timeouts, a validated answer, clean errors.

Every failure leaves this module as an ``UpstreamError`` whose message is one line (status and
Cloudflare's own message) and never holds the API token: the token travels only in the
``Authorization`` header, which no message, log line or exception here ever formats.
"""

from __future__ import annotations

import email.utils
import time
from urllib.parse import quote

import requests

from app.config.ice_servers import parse_ice_servers
from app.core.errors import UpstreamInvalid, UpstreamRejected, UpstreamUnavailable
from app.core.numbers import parse_digits

CONNECT_TIMEOUT = 2.0  # seconds to open the connection
READ_TIMEOUT = 3.5  # seconds between bytes of the answer; with the connect, a cold request stays under ~6 s
MAX_ANSWER_BYTES = 64 * 1024  # a real answer is under 2 KiB


class CloudflareClient:
    """Generate TURN credentials with a TURN key id and its API token."""

    source = "cloudflare"
    label = "Cloudflare"
    remote = True
    can_revoke = True

    def __init__(
        self,
        key_id: str,
        api_token: str,
        base_url: str,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
    ):
        """Keep the settings; the session is injectable for tests and reused for keep-alive."""
        self._credentials_url = f"{base_url}/turn/keys/{key_id}/credentials"
        self._generate_url = f"{self._credentials_url}/generate-ice-servers"
        self._headers = {"Authorization": f"Bearer {api_token}", "Content-Type": "application/json"}
        self._session = session or requests.Session()
        self._timeout = timeout

    def __repr__(self) -> str:
        """Show the endpoint, never the token."""
        return f"CloudflareClient({self._generate_url!r})"

    def issue(self, ttl: int, user: str | None = None, timeout: tuple[float, float] | None = None) -> list[dict]:
        """POST generate-ice-servers for a credential living ``ttl`` s; return its ICE servers, port 53 dropped.

        ``user`` (an opaque identifier) goes as ``customIdentifier``: Cloudflare's TURN analytics
        then show usage per user.
        """
        body = {"ttl": ttl} if user is None else {"ttl": ttl, "customIdentifier": user}
        timeout = timeout or self._timeout
        try:
            response = self._session.post(self._generate_url, json=body, headers=self._headers, timeout=timeout)
        except requests.Timeout:
            raise UpstreamUnavailable(f"Cloudflare did not answer within {sum(timeout):g} s") from None
        except requests.RequestException as exc:
            # The exception text can hold the URL (with the key id) and resolver noise: keep the class only.
            raise UpstreamUnavailable(f"could not reach Cloudflare ({type(exc).__name__})") from None
        if response.status_code not in (200, 201):
            raise UpstreamRejected(
                f"Cloudflare answered {response.status_code}: {_error_message(response)}",
                status=response.status_code,
                retry_after=retry_after(response.headers.get("Retry-After")),
            )
        try:
            payload = json_answer(response)
            if not isinstance(payload, dict):
                raise ValueError("the answer is not a JSON object")
            return parse_ice_servers(payload.get("iceServers"))
        except ValueError as exc:
            raise UpstreamInvalid(
                f"Cloudflare answered {response.status_code} without usable ICE servers: {exc}", status=response.status_code
            ) from None

    def revoke(self, username: str) -> None:
        """Revoke the credential of ``username`` (Cloudflare answers 204); raise UpstreamError."""
        url = f"{self._credentials_url}/{quote(username, safe='')}/revoke"
        try:
            response = self._session.post(url, headers=self._headers, timeout=self._timeout)
        except requests.Timeout:
            raise UpstreamUnavailable(f"Cloudflare did not answer within {sum(self._timeout):g} s") from None
        except requests.RequestException as exc:
            raise UpstreamUnavailable(f"could not reach Cloudflare ({type(exc).__name__})") from None
        if response.status_code not in (200, 204):
            raise UpstreamRejected(f"Cloudflare answered {response.status_code}: {_error_message(response)}", status=response.status_code)


def _error_message(response: requests.Response) -> str:
    """Pull Cloudflare's message out of its error envelope, or say what came instead."""
    try:
        errors = response.json().get("errors") or []
        messages = [str(e.get("message")) for e in errors if isinstance(e, dict) and e.get("message")]
    except (ValueError, AttributeError):
        messages = []
    if messages:
        return "; ".join(messages)[:200].replace("\n", " ")
    return response.reason or "no error message"


def redact(text: str, secrets) -> str:
    """Blank out each of ``secrets`` (and its URL-encoded form) in a vendor's own message: an error may quote the request."""
    for secret in secrets:
        if secret:
            for form in {secret, quote(secret, safe="")}:
                text = text.replace(form, "[redacted]")
    return text


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Parse Retry-After, in seconds or as an HTTP date, into seconds from now."""
    if not value:
        return None
    value = value.strip()
    seconds = parse_digits(value, max_digits=9)
    if seconds is not None:
        return float(seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def json_answer(response: requests.Response) -> object:
    """Return the answer's JSON, or None when it is too large or not JSON (a decoder's message never reaches a log line)."""
    if len(response.content) > MAX_ANSWER_BYTES:
        return None
    try:
        return response.json()
    except ValueError:
        return None
