"""Work off the request path: daemon threads, so a hanging upstream never blocks a shutdown; or, serverless, inline."""

from __future__ import annotations

import threading
from collections.abc import Callable


def daemon_spawner(name: str) -> Callable[[Callable[[], None]], None]:
    """Return a function that runs its argument in a daemon thread called ``name``."""

    def spawn(target: Callable[[], None]) -> None:
        threading.Thread(target=target, name=name, daemon=True).start()

    return spawn


def run_inline(target: Callable[[], None]) -> None:
    """Run ``target`` now, on the request that asked (serverless: a thread would be frozen with the instance)."""
    target()
