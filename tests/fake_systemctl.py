#!/usr/bin/env python3
"""A stand-in for systemctl in the deployment tests (this machine has no systemd PID 1).

It runs the units deploy.sh installed in SYSTEMD_UNIT_DIR the way systemd would for what
deploy.sh asks: ``start`` runs the service's ExecStart in its WorkingDirectory with its
Environment, as its User and Group (setpriv), under systemd-socket-activate on the socket unit's
ListenStream (LISTEN_FDS, as socket activation does); ``reload`` runs ExecReload's signal (HUP) at
the main PID; ``is-active`` looks at that PID. daemon-reload and enable are accepted and do nothing.
"""

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

UNITS = Path(os.environ["SYSTEMD_UNIT_DIR"])
PIDFILE = UNITS / "ice-servers.pid"


def directives(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def main_pid() -> int | None:
    try:
        pid = int(PIDFILE.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def main(args: list[str]) -> int:
    args = [arg for arg in args if not arg.startswith("--")]
    verb = args[0]
    if verb in ("daemon-reload", "enable"):
        return 0
    if verb == "is-active":
        return 0 if main_pid() else 3
    if verb == "reload":
        os.kill(main_pid(), signal.SIGHUP)
        return 0
    if verb == "start":
        service, socket_unit = directives("ice-servers.service"), directives("ice-servers.socket")
        environment = dict(os.environ)
        for assignment in service.get("Environment", []):
            for pair in shlex.split(assignment):
                key, _, value = pair.partition("=")
                environment[key] = value
        as_user = []
        if "User" in service and os.geteuid() == 0:
            user, group = service["User"][0], service.get("Group", service["User"])[0]
            as_user = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--"]
        command = ["systemd-socket-activate", "-l", socket_unit["ListenStream"][0], *as_user, *shlex.split(service["ExecStart"][0])]
        log = open(UNITS / "journal.log", "ab")
        process = subprocess.Popen(
            command, cwd=service["WorkingDirectory"][0], env=environment, stdout=log, stderr=log, start_new_session=True
        )
        PIDFILE.write_text(str(process.pid))  # systemd-socket-activate execs the service: the same PID
        return 0
    print(f"fake systemctl: {verb} is not simulated", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
