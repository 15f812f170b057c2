"""Work off the request path: daemon threads, so a hanging upstream never blocks a shutdown; or, serverless, inline."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("ice_servers")


def daemon_spawner(name: str) -> Callable[[Callable[[], None]], None]:
    """Return a function that runs its argument in a daemon thread called ``name``."""

    def spawn(target: Callable[[], None]) -> None:
        threading.Thread(target=target, name=name, daemon=True).start()

    return spawn


def run_inline(target: Callable[[], None]) -> None:
    """Run ``target`` now, on the request that asked (serverless: a thread would be frozen with the instance).

    What it raises is logged, not raised: as from a thread, the request goes on with what it holds.
    """
    try:
        target()
    except Exception as exc:  # a thread's failure never reached the request either
        log.error("Work off the request path failed (%s): the request goes on without it", type(exc).__name__)
