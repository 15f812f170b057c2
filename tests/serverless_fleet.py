"""A serverless fleet's life, the same on every platform: cold starts, freezes across the refresh point, an outage, a recovery.

``start(name)`` starts one instance of the platform (Lambda's execution environment, Vercel's
function) on the shared Redis and the Cloudflare stand-in; an instance has ``ask(address)``
(``GET /api/ice-servers`` as the platform delivers it: status and body), ``freeze()`` (SIGSTOP,
as a platform freezes an instance once it has answered) and ``thaw()``.

The settings: an 8 s window in a 40 s life, so the refresh point is 6 s after issue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

FLEET_SETTINGS = {"TURN_CREDENTIAL_TTL": "40", "ICE_CACHE_TTL": "8", "ICE_LOG_LEVEL": "INFO"}
REFRESH_POINT = 6.0  # seconds after issue: the window's last quarter
WINDOW = 8.0


def run(start: Callable, cloudflare) -> None:
    """Run the fleet's life; assert one upstream call per window, stale-if-error, never an expired credential."""
    fleet = [start(f"instance-{n}") for n in range(3)]
    answers: list[tuple[float, dict]] = []  # (when the answer arrived, its body)

    def ask(instance, n: int, freeze_after: bool = False) -> dict:
        status, body = instance.ask(f"203.0.113.{30 + n}")
        if freeze_after:
            instance.freeze()  # the moment it has answered, as the platform does
        assert status == 200 and any("username" in server for server in body["iceServers"]), (status, body)
        answers.append((time.time(), body))
        return body

    def ask_all(freeze_after: bool = False) -> list[dict]:
        with ThreadPoolExecutor(len(fleet)) as pool:
            return list(pool.map(lambda pair: ask(*pair, freeze_after=freeze_after), zip(fleet, range(len(fleet)), strict=True)))

    ask_all()  # three cold starts at once
    assert cloudflare.call_count == 1
    issued = cloudflare.calls[0]["time"]
    for instance in fleet:
        instance.freeze()
    time.sleep(max(0.0, issued + REFRESH_POINT + 0.5 - time.time()))

    # Thawed together past the refresh point, each frozen again the moment it answers. The upstream takes a second:
    # the refresh must be done (and stored) before an answer, since a thread left to finish it would be frozen with
    # the Redis lock held. The lock makes it one refresh for the three.
    cloudflare.configure(delay=1.0)
    for instance in fleet:
        instance.thaw()
    ask_all(freeze_after=True)
    cloudflare.configure(delay=0.0)
    assert cloudflare.call_count == 2
    renewed = cloudflare.calls[1]
    newcomer = start("newcomer")  # a fourth instance, cold, while the three stay frozen: the new credential is stored
    assert _username(ask(newcomer, 9)) == renewed["username"]
    for instance in fleet:
        instance.thaw()
    ask_all()
    assert cloudflare.call_count == 2

    # An outage past the window: the last credential, never past its expiry, and a cool-down holds every instance back.
    cloudflare.configure(mode="error500")
    time.sleep(max(0.0, renewed["time"] + WINDOW + 0.5 - time.time()))
    ask_all()
    ask_all()
    failed = [call for call in cloudflare.calls if call["status"] == 500]
    assert 1 <= len(failed) <= 2

    # The upstream is back: within its cool-down, one call brings every instance the new credential.
    cloudflare.configure(mode="ok")
    deadline = time.time() + 20
    while time.time() < deadline:
        latest = ask_all()
        succeeded = [call for call in cloudflare.calls if call["status"] == 201]
        if len(succeeded) == 3 and all(_username(body) == succeeded[-1]["username"] for body in latest):
            break
        time.sleep(0.5)
    assert [call["status"] for call in cloudflare.calls].count(201) == 3
    assert all(_username(body) == cloudflare.calls[-1]["username"] for body in latest)
    assert all(_expires(body) > arrived for arrived, body in answers)


def _username(body: dict) -> str:
    """Return the TURN username of an answer."""
    return next(server["username"] for server in body["iceServers"] if "username" in server)


def _expires(body: dict) -> float:
    """Return an answer's expiresAt as a timestamp."""
    return datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00")).timestamp()
