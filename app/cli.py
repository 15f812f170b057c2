"""Admin commands: thin wrappers over IceService."""

from __future__ import annotations

import time

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from app.ice import rfc3339
from app.service import LOCAL_STALENESS, RefreshError


@click.command("refresh-turn")
@with_appcontext
def refresh_turn() -> None:
    """Fetch a new TURN credential now and store it in the shared cache."""
    try:
        credential = current_app.extensions["ice_service"].refresh()
    except RefreshError as exc:
        raise click.ClickException(str(exc)) from None
    remaining = int(credential.expires_at - time.time())
    click.echo(
        f"New TURN credential from {credential.source} stored; expires at {rfc3339(credential.expires_at)} "
        f"(in {remaining} s). Every worker serves it within {LOCAL_STALENESS:g} s."
    )


def init_app(app: Flask) -> None:
    """Register the commands."""
    app.cli.add_command(refresh_turn)
