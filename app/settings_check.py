"""Check the settings as a fresh start would read them, for an operator or a gunicorn master that must not import the app.

    python -m app.settings_check                   one line per .env value, secrets not shown; exit 0
    python -m app.settings_check --handover-fd N   the .env values as JSON on file descriptor N
    python -m app.settings_check --nginx-limit RATE LIMIT_REQ...
                                                   one line if the nginx site's limit (limit_req_zone's rate=, each
                                                   limit_req line's parameters) is not ICE_RATE_LIMIT's twin, else
                                                   nothing; exit 0 (deploy.sh asks)

On a bad setting both print the one-line configuration error on stderr and exit 2. The gunicorn
master runs the second form in a subprocess at start and on every reload (HUP), so that workers
import new code while the master never does, and a bad new .env leaves the last good settings in
force instead of taking the service down. The values (secrets among them) travel on a pipe of the
master's, never on stdout, where a terminal, pm2 or journald would keep them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from dotenv import dotenv_values

from app.config import DEFAULT_ENV_FILE, SECRET_VARS, ConfigError, env_file_problem, load_settings
from app.config.rates import nginx_twin_problem

EXIT_BAD_SETTING = 2


def dotenv_file() -> str | None:
    """Return the dotenv file load_settings reads: ICE_ENV_FILE (empty: none), else the project's .env."""
    path = os.environ.get("ICE_ENV_FILE", str(DEFAULT_ENV_FILE)) or None
    return path if path and Path(path).is_file() else None


def known_names() -> frozenset[str]:
    """Return the names the service reads: the configuration reference's, and every secret's ``_FILE`` form."""
    from app.config import reference

    return frozenset(variable.name for _, variables in reference.SECTIONS for variable in variables) | {
        f"{name}_FILE" for name in SECRET_VARS
    }


def shown(name: str, value: str, known: frozenset[str] = frozenset()) -> str:
    """Return ``value`` as an operator may see it: a secret (or a setting that may hold one) only as "(secret, not shown)".

    A name the service does not read (a typo, another program's) is named, its value never shown: it may be a
    misspelt secret. A URL's user and password are never shown either.
    """
    if name in SECRET_VARS:
        return "(secret, not shown)"
    if name not in known:
        return "(not read by ice-servers: a typo? value not shown)"
    return re.sub(r"://[^/@\s]*@", "://(not shown)@", value)


def main(argv: list[str] | None = None) -> int:
    """Validate the settings; print them (secrets redacted) or hand them over on a descriptor, or print the error as one line."""
    parser = argparse.ArgumentParser(prog="python -m app.settings_check", description=__doc__.splitlines()[0])
    parser.add_argument("--handover-fd", type=int, metavar="N", help="write the .env values as JSON to file descriptor N")
    parser.add_argument("--nginx-limit", nargs="+", metavar="RATE LIMIT_REQ", help="compare the nginx site's limit with ICE_RATE_LIMIT")
    args = parser.parse_args(argv)
    path = dotenv_file()
    values = {name: value for name, value in (dotenv_values(path) if path else {}).items() if value is not None}
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"ice-servers: configuration error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    if args.nginx_limit is not None:
        rate, *limit_lines = args.nginx_limit
        if problem := nginx_twin_problem(settings.rate_limit, rate, limit_lines):
            print(problem)
        return 0
    warnings = [problem] if (problem := env_file_problem(settings.env_file)) else []
    if args.handover_fd is not None:
        with os.fdopen(args.handover_fd, "w") as handover:
            json.dump({"file": path, "values": values, "warnings": warnings}, handover)
        return 0
    known = known_names()
    print(f"ice-servers: the settings are valid ({len(values)} from {path or 'no .env file'}; secrets not shown)")
    for name, value in sorted(values.items()):
        print(f"{name}={shown(name, value, known)}")
    for warning in warnings:
        print(f"warning: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
