"""Twilio's Network Traversal Service: a TURN credential per call of the Tokens resource, clean errors, no secret out.

``POST {TWILIO_API_BASE}/2010-04-01/Accounts/{AccountSid}/Tokens.json`` with HTTP Basic auth (the
account SID and auth token, or an API key SID and secret with the account SID in the path) and the
form field ``Ttl`` answers 201 with ``username``, ``password``, ``ttl`` (seconds, as a string) and
``ice_servers`` (entries may carry the deprecated ``url`` beside ``urls``). Tokens live up to 24 h.
Twilio has no revocation. The auth token travels only in the Authorization header; every failure
leaves as an ``UpstreamError`` with a message of our own (requests' texts carry the URL).
"""

from __future__ import annotations

import requests

from app.config.ice_servers import parse_ice_servers
from app.core.errors import UpstreamInvalid, UpstreamRejected, UpstreamUnavailable
from app.core.numbers import parse_digits
from app.core.ports import Issued
from app.providers.cloudflare import CONNECT_TIMEOUT, READ_TIMEOUT, json_answer, redact, retry_after

MAX_TTL = 86_400  # Twilio's tokens live "up to 24 hours"


class TwilioProvider:
    """Ask Twilio for a Network Traversal token."""

    source = "twilio"
    label = "Twilio"
    remote = True

    def __init__(
        self,
        account_sid: str,
        user: str,
        secret: str,
        base_url: str,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
    ):
        """Keep the settings: ``user`` and ``secret`` are the account SID and auth token, or an API key SID and secret."""
        self._url = f"{base_url}/2010-04-01/Accounts/{account_sid}/Tokens.json"
        self._auth = (user, secret)
        self._session = session or requests.Session()
        self._timeout = timeout

    def __repr__(self) -> str:
        """Show the endpoint, never the secret."""
        return f"TwilioProvider({self._url!r})"

    def issue(self, ttl: int, user: str | None = None, timeout: tuple[float, float] | None = None) -> Issued:
        """Create a token living ``ttl`` seconds (at most 24 h); return its ICE servers and the life Twilio granted.

        Twilio attributes nothing to a user: ``user`` is not sent.
        """
        timeout = timeout or self._timeout
        try:
            response = self._session.post(self._url, data={"Ttl": str(min(ttl, MAX_TTL))}, auth=self._auth, timeout=timeout)
        except requests.Timeout:
            raise UpstreamUnavailable(f"Twilio did not answer within {sum(timeout):g} s") from None
        except requests.RequestException as exc:
            raise UpstreamUnavailable(f"could not reach Twilio ({type(exc).__name__})") from None
        if response.status_code != 201:
            raise UpstreamRejected(
                f"Twilio answered {response.status_code}: {_error_message(response, self._auth)}",
                status=response.status_code,
                retry_after=retry_after(response.headers.get("Retry-After")),
            )
        try:
            payload = json_answer(response)
            if not isinstance(payload, dict) or not isinstance(payload.get("ice_servers"), list):
                raise ValueError("the answer has no ice_servers list")
            granted = parse_digits(str(payload.get("ttl", "")), max_digits=9)
            if not granted:
                raise ValueError("the answer has no ttl")
            servers = [_standard(entry) for entry in payload["ice_servers"]]
            return Issued(parse_ice_servers(servers), min(granted, ttl))
        except ValueError as exc:
            raise UpstreamInvalid(f"Twilio answered {response.status_code} without usable ICE servers: {exc}", status=201) from None


def _standard(entry: object) -> dict:
    """Turn one of Twilio's entries into a standard RTCIceServer: ``urls`` (never the deprecated ``url``), and its credential."""
    if not isinstance(entry, dict):
        raise ValueError("an ice_servers entry is not an object")
    urls = entry.get("urls", entry.get("url"))
    server = {"urls": urls}
    for field in ("username", "credential"):
        if field in entry:
            server[field] = entry[field]
    return server


def _error_message(response: requests.Response, secrets: tuple[str, ...] = ()) -> str:
    """Pull Twilio's message (and code) out of its error body, or say what came instead; any of ``secrets`` in it is blanked first."""
    try:
        body = response.json()
        message, code = body.get("message"), body.get("code")
    except (ValueError, AttributeError):
        message, code = None, None
    if message:
        text = redact(str(message), secrets)[:200]
        return (f"{text} (code {code})" if code else text).replace("\n", " ")
    return response.reason or "no error message"
