"""Admin commands: thin wrappers over IceService."""

from __future__ import annotations

import time

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from app.core import operations
from app.core.cache import LOCAL_STALENESS
from app.core.errors import RefreshError
from app.core.ice import rfc3339

USER_HELP = "the subject (sub) of the user's token: act on that user's own credential (ICE_CREDENTIAL_SCOPE=user)"


def _user(subject: str | None) -> str | None:
    """Return the opaque id of ``subject``, as the views compute it; None for the shared credential."""
    if subject is None:
        return None
    if not current_app.extensions["ice_service"].per_user:
        raise click.ClickException("--user needs ICE_CREDENTIAL_SCOPE=user: every caller shares one credential now")
    return current_app.extensions["ice_user_ids"].opaque(subject)


@click.command("refresh-turn")
@click.option("--user", "subject", metavar="SUB", help=USER_HELP)
@with_appcontext
def refresh_turn(subject: str | None) -> None:
    """Fetch a new TURN credential now and store it in the shared cache."""
    user = _user(subject)
    try:
        credential = operations.refresh(current_app.extensions["ice_service"], user)
    except RefreshError as exc:
        raise click.ClickException(str(exc)) from None
    remaining = int(credential.expires_at - time.time())
    whose = "" if user is None else f" for user {user}"
    click.echo(
        f"New TURN credential{whose} from {credential.source} stored; expires at {rfc3339(credential.expires_at)} "
        f"(in {remaining} s). Every worker serves it within {LOCAL_STALENESS:g} s."
    )


@click.command("revoke-turn")
@click.option("--user", "subject", metavar="SUB", help=USER_HELP)
@with_appcontext
def revoke_turn(subject: str | None) -> None:
    """Replace a TURN credential in the shared cache and revoke the old one at its vendor (Twilio cannot: replaced only)."""
    user = _user(subject)
    try:
        done = operations.revoke(current_app.extensions["ice_service"], user)
    except RefreshError as exc:
        raise click.ClickException(str(exc)) from None
    whose = "" if user is None else f" of user {user}"
    if not done.revoked_upstream:
        now = (
            f"new credential from {done.new.source} expires at {rfc3339(done.new.expires_at)}"
            if done.new
            else f"callers get {done.serving}"
        )
        click.echo(
            f"Replaced TURN credential {done.old.username}{whose} everywhere ({now}), but {done.vendor} cannot revoke "
            f"credentials: it stays valid at {done.vendor} until {rfc3339(done.old.expires_at)}."
        )
        return
    if done.new is not None:
        expiry = rfc3339(done.new.expires_at)
        click.echo(
            f"Revoked TURN credential {done.old.username}{whose}. New credential from {done.new.source} expires at {expiry}; "
            "every worker serves it now."
        )
    else:
        click.echo(
            f"Revoked TURN credential {done.old.username}{whose}; no new one could be had ({done.why_none}). "
            f"Until one can be, callers get {done.serving}."
        )


@click.command("ice-status")
@click.option("--user", "subject", metavar="SUB", help=USER_HELP)
@with_appcontext
def ice_status(subject: str | None) -> None:
    """Show where credentials come from, what the shared cache holds, and any cool-down."""
    user = _user(subject)
    status = operations.status(current_app.extensions["ice_service"], user)
    now = time.time()
    click.echo(f"Providers:    {', '.join(status.providers) or 'none configured: STUN only'}")
    for label, at, outcome in status.provider_outcomes:
        click.echo(f"              {label}, last asked {int(now - at)} s ago: {outcome}")
    if status.per_user:
        which = f"user {user}" if user else "use --user SUB for one"
        click.echo(f"Scope:        one credential per user (ICE_CREDENTIAL_SCOPE=user); {which}")
    if not status.shared:
        click.echo("Shared cache: in-process (REDIS_URL is not set): each worker holds its own credential, out of reach here")
        return
    if status.snapshot is None:
        raise click.ClickException(f"shared cache: {status.store_error}")
    click.echo(f"Shared cache: Redis, answering; {current_app.extensions['ice_service'].topology()}")
    credential, revoked = status.snapshot.credential, status.snapshot.revoked
    if revoked is not None:
        click.echo(f"Credential:   none: {revoked.username} was revoked (the next provider or the fallback serves until one is had)")
    elif credential is None:
        click.echo("Credential:   none cached")
    else:
        state = "fresh" if credential.is_fresh(now) else "past its refresh point (served only while no new one can be had)"
        click.echo(f"Credential:   from {credential.source}, {state}; user {credential.username}")
        for label, at in (("Issued", credential.issued_at), ("Refresh at", credential.refresh_at), ("Expires at", credential.expires_at)):
            click.echo(f"{label + ':':<14}{rfc3339(at)} ({_relative(at - now)})")
    if status.snapshot.cooldown:
        click.echo(f"Cool-down:    {status.snapshot.cooldown:.1f} s left after {status.snapshot.failures} failure(s) in a row")
    else:
        click.echo("Cool-down:    none")
    if status.egress_limit is not None:
        click.echo(f"Egress:       {_egress(status.egress, status.egress_limit, now)}")
        if status.egress_failure is not None and (status.egress is None or status.egress_failure[0] > status.egress.read_at):
            at, why = status.egress_failure
            click.echo(f"              the last reading failed {int(now - at)} s ago: {why}")


def _egress(reading, limit: int, now: float) -> str:
    """Describe the month-to-date TURN egress against ICE_EGRESS_LIMIT_GB, in decimal GB."""
    if reading is None:
        return f"no reading yet; limit {limit / 1e9:g} GB"
    side = "past the limit: no Cloudflare credential is handed out" if reading.egress_bytes > limit else "under the limit"
    age = int(now - reading.read_at)
    return f"{reading.egress_bytes / 1e9:.3f} GB of {limit / 1e9:g} GB since {reading.month}, read {age} s ago; {side}"


def _relative(seconds: float) -> str:
    """Say how far ``seconds`` from now lies."""
    return f"in {int(seconds)} s" if seconds >= 0 else f"{int(-seconds)} s ago"


def init_app(app: Flask) -> None:
    """Register the commands."""
    app.cli.add_command(refresh_turn)
    app.cli.add_command(revoke_turn)
    app.cli.add_command(ice_status)
