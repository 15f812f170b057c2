"""The platform this process runs on: a server, or a serverless function (Vercel, AWS Lambda, another)."""

from __future__ import annotations

import os
from collections.abc import Mapping


def serverless_platform(environ: Mapping[str, str] | None = None) -> str | None:
    """Name the serverless platform this process runs on, from its own variables or ICE_SERVERLESS; None: a server.

    Readable before the other settings are (a bad setting is then reported the platform's way).
    """
    environ = os.environ if environ is None else environ
    forced = (environ.get("ICE_SERVERLESS") or "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return None
    if (environ.get("VERCEL") or "").strip():
        return "vercel"
    if (environ.get("AWS_LAMBDA_FUNCTION_NAME") or "").strip():
        return "aws-lambda"
    return "ICE_SERVERLESS" if forced in ("1", "true", "yes", "on") else None
