"""The identity provider's signing keys (JWKS): fetched lazily, cached per process, never a stampede.

Policy, because PyJWT's own ``PyJWKClient`` holds one lock across every lookup and fetch (so a
hanging endpoint queues every request behind a full timeout) and forgets its keys when a refetch
fails after their lifespan:

- nothing is fetched at start: the service starts even while the URL hangs;
- one fetch at a time, in a thread of its own (serverless: on the request that finds it due,
  holding no lock) with explicit timeouts, and at most one per
  ``REFETCH_INTERVAL`` whatever started it (an unknown ``kid``, keys older than ``MAX_AGE``), so a
  provider that fails fast is not asked once per request;
- requests whose key is known never wait; before the first keys arrive, requests wait for the
  fetch, bounded by ``WAIT_LIMIT``; once keys are held, at most ``UNKNOWN_KID_WAITERS`` requests per
  process wait for a fetch on an unknown ``kid`` (a rotation), and the others are refused at once:
  one address sending made-up ``kid``s cannot hold every worker thread;
- keys older than ``MAX_AGE`` are refetched in the background while still used;
- a failed fetch keeps the keys already held and logs one WARNING line.

PyJWT parses the keys (``PyJWKSet``); only keys for signing, with a ``kid``, are kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import jwt
import requests

from app.core.background import daemon_spawner

CONNECT_TIMEOUT = 2.0  # seconds to open the connection to the identity provider
READ_TIMEOUT = 3.0  # seconds between bytes of its answer: with the connect, a fetch stays within 5 s
WAIT_LIMIT = CONNECT_TIMEOUT + READ_TIMEOUT  # the longest a request waits for a fetch it needs
REFETCH_INTERVAL = 5.0  # seconds between fetches, whatever starts them (a rotation, junk tokens, old keys, a failing provider)
UNKNOWN_KID_WAITERS = 1  # threads of a process that may wait on a fetch for an unknown kid once keys are held
MAX_AGE = 600.0  # seconds keys are used before a background refetch (providers rotate slowly)
MAX_JWKS_BYTES = 256 * 1024  # real key sets are a few KiB

log = logging.getLogger("ice_servers")


class JwksCache:
    """The signing keys at one JWKS URL, by ``kid``."""

    def __init__(
        self,
        url: str,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        spawn: Callable[[Callable[[], None]], None] | None = None,
    ):
        """Keep the URL; nothing is fetched until a key is asked for."""
        self._url = url
        self._session = session or requests.Session()
        self._clock = clock
        self._spawn = spawn or daemon_spawner("ice-jwks-fetch")
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")  # of the keys held
        self._next_fetch_at = float("-inf")  # the earliest a lookup may start another fetch
        self._fetching = False
        self._changed = threading.Condition()
        self._waiting = 0  # threads waiting on a fetch for an unknown kid
        self.fetches = 0  # started, for the tests and the logs

    def __repr__(self) -> str:
        """Name the cache."""
        return f"JwksCache({self._url!r})"

    def key(self, kid: str) -> jwt.PyJWK | None:
        """Return the key ``kid`` names, fetching once if it is unknown; None when there is none."""
        with self._changed:
            now = self._clock()
            key = self._keys.get(kid)
            due = now >= self._next_fetch_at and (key is None or now - self._fetched_at >= MAX_AGE)
            fetch = due and self._claim_fetch(now)
        if fetch:
            # Holding no lock: other requests go on with the keys held. A server fetches in a thread (for old keys this
            # request goes on with the key held); serverless, this request fetches, then reads the keys it got.
            self._start_fetch()
        with self._changed:
            key = self._keys.get(kid)
            if key is not None:
                return key
            if not self._fetching:
                return None  # no fetch now, or one that already ended
            if self._keys and self._waiting >= UNKNOWN_KID_WAITERS:
                return None  # a rotation's first tokens are few; a flood of made-up kids must not hold every thread
            self._waiting += 1
            try:
                self._changed.wait_for(lambda: not self._fetching, timeout=WAIT_LIMIT)
            finally:
                self._waiting -= 1
            return self._keys.get(kid)

    def _claim_fetch(self, now: float) -> bool:
        """Claim the next fetch unless one runs (call holding the condition); True: the caller starts it."""
        if self._fetching:
            return False
        self._fetching, self._next_fetch_at = True, now + REFETCH_INTERVAL
        self.fetches += 1
        return True

    def _start_fetch(self) -> None:
        """Run the claimed fetch with the spawner: its own thread, or serverless inline."""
        try:
            self._spawn(self._fetch)
        except RuntimeError:  # no thread could be started (interpreter shutting down)
            with self._changed:
                self._fetching = False
                self._changed.notify_all()

    def _fetch(self) -> None:
        """Fetch and parse the key set; keep the old keys on any failure."""
        keys = None
        try:
            keys = self._download()
        except (requests.RequestException, ValueError, jwt.PyJWTError) as exc:
            log.warning("Could not fetch the JWKS at ICE_JWKS_URL (%s): keeping the %d key(s) held", _describe(exc), len(self._keys))
        finally:
            with self._changed:
                if keys is not None:
                    self._keys, self._fetched_at = keys, self._clock()
                self._fetching = False
                self._changed.notify_all()

    def _download(self) -> dict[str, jwt.PyJWK]:
        """GET the JWKS; return its signing keys by kid, or raise."""
        response = self._session.get(self._url, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), allow_redirects=False)
        if response.status_code != 200:
            raise ValueError(f"it answered {response.status_code}")
        if len(response.content) > MAX_JWKS_BYTES:
            raise ValueError(f"its answer is larger than {MAX_JWKS_BYTES // 1024} KiB")
        payload = response.json()
        if not isinstance(payload, dict) or not isinstance(payload.get("keys"), list):
            raise ValueError("its answer is not a JWK set")
        # PyJWKSet drops keys it cannot use (unknown kty or algorithm) and raises if none is left.
        key_set = jwt.PyJWKSet(payload["keys"])
        keys = {key.key_id: key for key in key_set.keys if key.key_id and key.public_key_use in ("sig", None)}
        if not keys:
            raise ValueError("it holds no signing key with a kid")
        return keys


def _describe(exc: Exception) -> str:
    """Say why a fetch failed in a few words, without the URL."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {CONNECT_TIMEOUT + READ_TIMEOUT:g} s"
    if isinstance(exc, requests.RequestException):
        return f"could not connect ({type(exc).__name__})"
    if isinstance(exc, jwt.PyJWTError):
        return "no usable key in it"
    return str(exc)[:120] if str(exc) else type(exc).__name__
