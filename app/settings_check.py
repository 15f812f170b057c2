"""Check the settings as a fresh start would read them, for a gunicorn master that must not import the app.

    python -m app.settings_check

Prints, on success, the JSON of the values read from the dotenv file (the workers are to get them
through their environment) and exits 0; on a bad setting, prints the one-line configuration error
on stderr and exits 2. The master runs it in a subprocess at start and on every reload (HUP), so
that workers import new code while the master never does, and a bad new .env leaves the last good
settings in force instead of taking the service down.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from dotenv import dotenv_values

from app.config import DEFAULT_ENV_FILE, ConfigError, env_file_problem, load_settings

EXIT_BAD_SETTING = 2


def dotenv_file() -> str | None:
    """Return the dotenv file load_settings reads: ICE_ENV_FILE (empty: none), else the project's .env."""
    path = os.environ.get("ICE_ENV_FILE", str(DEFAULT_ENV_FILE)) or None
    return path if path and Path(path).is_file() else None


def main() -> int:
    """Validate the settings; print the dotenv values as JSON, or the error as one line."""
    path = dotenv_file()
    values = {name: value for name, value in (dotenv_values(path) if path else {}).items() if value is not None}
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"ice-servers: configuration error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    warnings = [problem] if (problem := env_file_problem(settings.env_file)) else []
    print(json.dumps({"file": path, "values": values, "warnings": warnings}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
