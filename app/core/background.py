"""Work off the request path: daemon threads, so a hanging upstream never blocks a shutdown."""

from __future__ import annotations

import threading
from collections.abc import Callable


def daemon_spawner(name: str) -> Callable[[Callable[[], None]], None]:
    """Return a function that runs its argument in a daemon thread called ``name``."""

    def spawn(target: Callable[[], None]) -> None:
        threading.Thread(target=target, name=name, daemon=True).start()

    return spawn
