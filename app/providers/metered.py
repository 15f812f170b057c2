"""Metered's TURN REST API (one app per subdomain): a credential per window, its ICE servers, revocation; no secret out.

With a secret key: ``POST /api/v1/turn/credential?secretKey=S`` with ``{"expiryInSeconds", "label"}``
answers ``{"username", "password", "expiryInSeconds", "label", "apiKey"}``, and
``GET /api/v1/turn/credentials?apiKey=<that apiKey>`` the ICE servers for it (a JSON array of
RTCIceServer). ``DELETE /api/v1/turn/credential?secretKey=S`` with ``{"username": U}`` revokes one
(200 ``{"success": true}``, 400 when unknown). With only an API key: the app's standing credential,
fetched with that GET. Errors are ``{"message": ...}``. The keys travel in query strings, so a
request URL is a secret: no message here ever formats one (requests' exception texts carry it).
"""

from __future__ import annotations

import time

import requests

from app.config.ice_servers import parse_ice_servers
from app.core.errors import UpstreamError, UpstreamInvalid, UpstreamRejected, UpstreamUnavailable
from app.core.ports import Issued
from app.providers.cloudflare import CONNECT_TIMEOUT, READ_TIMEOUT, redact, retry_after

MAX_ANSWER_BYTES = 64 * 1024
MIN_CALL = 0.2  # seconds the second call (the ICE servers) is worth making with
SHARED_LABEL = "ice-servers"  # the label of the shared credential; a user's is their opaque id


class MeteredProvider:
    """Ask Metered for TURN credentials of one app."""

    source = "metered"
    label = "Metered"
    remote = True

    def __init__(
        self,
        base_url: str,
        secret_key: str | None = None,
        api_key: str | None = None,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
    ):
        """Keep the settings: the secret key (one credential per window, revocable), or only the app's API key."""
        self._base = base_url
        self._secret_key, self._api_key = secret_key, api_key
        self._session = session or requests.Session()
        self._timeout = timeout

    def __repr__(self) -> str:
        """Show the app's endpoint, never a key."""
        return f"MeteredProvider({self._base!r})"

    def issue(self, ttl: int, user: str | None = None, timeout: tuple[float, float] | None = None) -> Issued:
        """Create a credential living ``ttl`` seconds labelled with ``user`` (or the shared label) and return its ICE servers.

        With only an API key, the app's standing credential: its life is taken as ``ttl``.
        """
        timeout = timeout or self._timeout
        if self._secret_key is None:
            return Issued(self._servers(self._api_key, timeout), ttl)
        deadline = time.monotonic() + sum(timeout)  # both calls together within the one budget
        body = {"expiryInSeconds": ttl, "label": user or SHARED_LABEL}
        created = self._call("POST", "/api/v1/turn/credential", {"secretKey": self._secret_key}, body, (200, 201), timeout)
        try:
            if not isinstance(created, dict) or not isinstance(created.get("apiKey"), str) or not created["apiKey"]:
                raise ValueError("the answer has no apiKey")
            granted = created.get("expiryInSeconds", ttl)
            if isinstance(granted, bool) or not isinstance(granted, int) or granted <= 0:
                raise ValueError("the answer has no positive expiryInSeconds")
        except ValueError as exc:
            self._forget(created.get("username") if isinstance(created, dict) else None, deadline)
            raise UpstreamInvalid(f"Metered created a credential without what it needs: {exc}") from None
        try:
            left = deadline - time.monotonic()
            if left < MIN_CALL:
                raise UpstreamUnavailable(
                    f"Metered created a credential but no time was left within {sum(timeout):g} s to fetch its ICE servers"
                )
            connect = min(timeout[0], left / 3)
            servers = self._servers(created["apiKey"], (connect, max(MIN_CALL, left - connect - MIN_CALL)))  # time kept to delete it
        except UpstreamError:
            self._forget(created.get("username"), deadline)
            raise
        return Issued(servers, min(granted, ttl))

    def _forget(self, username: object, deadline: float) -> None:
        """Delete a credential created for nothing (its ICE servers could not be had) if time is left; best effort."""
        left = deadline - time.monotonic()
        if not isinstance(username, str) or not username or left < MIN_CALL:
            return  # it expires on its own; nobody was given it
        try:
            body = {"username": username}
            self._call("DELETE", "/api/v1/turn/credential", {"secretKey": self._secret_key}, body, (200,), (left / 3, left * 2 / 3))
        except UpstreamError:
            pass

    @property
    def can_revoke(self) -> bool:
        """Tell whether a credential of ours can be revoked: only one created with the secret key."""
        return self._secret_key is not None

    @property
    def standing(self) -> bool:
        """Tell whether every credential is the app's standing one (only an API key): the same after any refresh."""
        return self._secret_key is None

    def revoke(self, username: str) -> None:
        """Delete the credential of ``username`` (the secret key is needed); raise UpstreamError."""
        self._need_secret_key()
        self._call("DELETE", "/api/v1/turn/credential", {"secretKey": self._secret_key}, {"username": username}, (200,), self._timeout)

    def revoke_label(self, label: str) -> None:
        """Delete every credential labelled ``label`` (one user's); raise UpstreamError."""
        self._need_secret_key()
        params = {"secretKey": self._secret_key, "label": label}
        self._call("DELETE", "/api/v2/turn/credential/by_label", params, None, (200,), self._timeout)

    def _secrets(self, params: dict) -> tuple[str, ...]:
        """Return the keys a request of ours carried: Metered's own message may quote them."""
        return tuple(secret for secret in (self._secret_key, self._api_key, params.get("apiKey")) if secret)

    def _need_secret_key(self) -> None:
        """Refuse a revocation without the secret key."""
        if self._secret_key is None:
            raise UpstreamRejected("Metered revokes only with METERED_SECRET_KEY; the app's standing API key cannot be revoked here")

    def _servers(self, api_key: str, timeout: tuple[float, float]) -> list[dict]:
        """GET the ICE servers of the credential ``api_key`` names."""
        answer = self._call("GET", "/api/v1/turn/credentials", {"apiKey": api_key}, None, (200,), timeout)
        try:
            if not isinstance(answer, list):
                raise ValueError("the answer is not an array of ICE servers")
            return parse_ice_servers(answer)
        except ValueError as exc:
            raise UpstreamInvalid(f"Metered answered without usable ICE servers: {exc}") from None

    def _call(self, method: str, path: str, params: dict, body: dict | None, ok: tuple[int, ...], timeout):
        """Make one request; return its JSON; raise UpstreamError with a message that never holds the URL or a key."""
        try:
            response = self._session.request(method, self._base + path, params=params, json=body, timeout=timeout)
        except requests.Timeout:
            raise UpstreamUnavailable(f"Metered did not answer within {sum(timeout):g} s") from None
        except requests.RequestException as exc:
            raise UpstreamUnavailable(f"could not reach Metered ({type(exc).__name__})") from None
        if response.status_code not in ok:
            raise UpstreamRejected(
                f"Metered answered {response.status_code} to {method} {path}: {_error_message(response, self._secrets(params))}",
                status=response.status_code,
                retry_after=retry_after(response.headers.get("Retry-After")),
            )
        try:
            return response.json() if len(response.content) <= MAX_ANSWER_BYTES else None
        except ValueError:
            raise UpstreamInvalid(f"Metered answered {method} {path} with something that is not JSON") from None


def _error_message(response: requests.Response, secrets: tuple[str, ...] = ()) -> str:
    """Pull Metered's message out of its error body, or say what came instead; any of ``secrets`` in it is blanked first."""
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    return redact(str(message), secrets)[:200].replace("\n", " ") if message else (response.reason or "no error message")


__all__ = ["MeteredProvider", "UpstreamError"]
