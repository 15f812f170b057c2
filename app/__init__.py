"""ice-servers: STUN/TURN settings with short-lived Cloudflare TURN credentials for WebRTC clients."""

from __future__ import annotations


def create_app(settings=None, service=None):
    """Build the app (app/web/factory.py); imported on call, so that ``import app.config`` loads nothing else."""
    from app.web.factory import create_app as build

    return build(settings, service)
