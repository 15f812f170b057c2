"""The TURN providers' settings: Cloudflare's key, Twilio, Metered, a TURN server's shared secret; the chain's order.

A vendor is configured when its settings are there; an incomplete one stops the start with one line
naming what is missing. Its secrets are declared once (VENDOR_SECRETS): the ``_FILE`` form, the
redaction of ``python -m app.settings_check`` and the settings check all read that declaration.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from app.config.ice_servers import is_blocked_url

DEFAULT_TWILIO_API_BASE = "https://api.twilio.com"
TWILIO_SID = re.compile(r"^(AC|SK)[0-9A-Za-z]{32}$")  # an account SID (AC...) or an API key SID (SK...): 34 characters
METERED_APP = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")  # a subdomain of metered.live

KEY_ID_VARS = ("CLOUDFLARE_TURN_TOKEN_ID", "TURN_KEY_ID")  # the name, then the first guide's alias
API_TOKEN_VARS = ("CLOUDFLARE_API_TOKEN", "TURN_KEY_API_TOKEN")
PROVIDERS = ("cloudflare", "twilio", "metered", "turn-secret")  # the default order of those configured
NEEDED = {  # what each provider needs, as a refusal names it
    "cloudflare": "CLOUDFLARE_TURN_TOKEN_ID and CLOUDFLARE_API_TOKEN are",
    "twilio": "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET) are",
    "metered": "METERED_APP and METERED_SECRET_KEY (or METERED_API_KEY) are",
    "turn-secret": "TURN_SHARED_SECRET and TURN_URLS are",
}

# Secrets of the vendors, each with a NAME_FILE form, never printed.
VENDOR_SECRETS = ("TWILIO_AUTH_TOKEN", "TWILIO_API_KEY_SECRET", "METERED_SECRET_KEY", "METERED_API_KEY")


@dataclass(frozen=True)
class TwilioSettings:
    """Twilio's Network Traversal Service: the account, and who signs the requests (the account, or an API key)."""

    account_sid: str
    user: str  # the account SID, or an API key SID
    secret: str = field(repr=False)  # the auth token, or the API key's secret
    api_base: str = DEFAULT_TWILIO_API_BASE


@dataclass(frozen=True)
class MeteredSettings:
    """Metered's TURN REST API of one app: the secret key (a credential per window) or only its API key."""

    app: str
    api_base: str
    secret_key: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)


def cloudflare_settings(env: Mapping[str, str], error) -> tuple[str | None, str | None]:
    """Return Cloudflare's TURN key id and API token (each under its name or the first guide's alias), or neither."""
    key_id, api_token = _aliased(env, *KEY_ID_VARS, error), _aliased(env, *API_TOKEN_VARS, error)
    if bool(key_id) != bool(api_token):
        missing = API_TOKEN_VARS[0] if key_id else KEY_ID_VARS[0]
        present = KEY_ID_VARS[0] if key_id else API_TOKEN_VARS[0]
        raise error(f"{missing} is not set but {present} is: set both, or neither for STUN only")
    return key_id, api_token


def _aliased(env: Mapping[str, str], name: str, alias: str, error) -> str | None:
    """Return the value of ``name`` or its alias; refuse two different values."""
    value, alias_value = env.get(name), env.get(alias)
    if value and alias_value and value != alias_value:
        raise error(f"{name} and {alias} are both set, to different values: keep one")
    return value or alias_value


def twilio_settings(env: Mapping[str, str], url: Callable[[Mapping[str, str], str, str], str], error) -> TwilioSettings | None:
    """Parse the TWILIO_ settings; None when none is set. ``url`` checks an API base; ``error`` is ConfigError."""
    names = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_API_KEY_SID", "TWILIO_API_KEY_SECRET")
    if not any(env.get(name) for name in names):
        return None
    account_sid = env.get("TWILIO_ACCOUNT_SID")
    if not account_sid:
        raise error("TWILIO_ACCOUNT_SID is not set: the twilio provider needs it with TWILIO_AUTH_TOKEN or an API key")
    if not TWILIO_SID.fullmatch(account_sid) or not account_sid.startswith("AC"):
        raise error("TWILIO_ACCOUNT_SID must be an account SID: AC and 32 letters or digits")
    key_sid, key_secret, token = env.get("TWILIO_API_KEY_SID"), env.get("TWILIO_API_KEY_SECRET"), env.get("TWILIO_AUTH_TOKEN")
    if bool(key_sid) != bool(key_secret):
        missing = "TWILIO_API_KEY_SECRET" if key_sid else "TWILIO_API_KEY_SID"
        raise error(f"{missing} is not set: an API key needs TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET")
    if key_sid and not (TWILIO_SID.fullmatch(key_sid) and key_sid.startswith("SK")):
        raise error("TWILIO_API_KEY_SID must be an API key SID: SK and 32 letters or digits")
    if not key_sid and not token:
        raise error("TWILIO_AUTH_TOKEN is not set: the twilio provider needs it, or TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET")
    user, secret = (key_sid, key_secret) if key_sid else (account_sid, token)
    base = url(env, "TWILIO_API_BASE", DEFAULT_TWILIO_API_BASE).rstrip("/")
    return TwilioSettings(account_sid, user, secret, base)


def metered_settings(env: Mapping[str, str], url: Callable[[Mapping[str, str], str, str], str], error) -> MeteredSettings | None:
    """Parse the METERED_ settings; None when none is set."""
    names = ("METERED_APP", "METERED_SECRET_KEY", "METERED_API_KEY", "METERED_API_BASE")
    if not any(env.get(name) for name in names):
        return None
    app = env.get("METERED_APP")
    if not app:
        raise error("METERED_APP is not set: the metered provider needs the app's name (https://APP.metered.live)")
    if not METERED_APP.fullmatch(app):
        raise error("METERED_APP must be the app's subdomain of metered.live: lowercase letters, digits and hyphens")
    secret_key, api_key = env.get("METERED_SECRET_KEY"), env.get("METERED_API_KEY")
    if not secret_key and not api_key:
        raise error("METERED_SECRET_KEY is not set: the metered provider needs it (or METERED_API_KEY for the app's standing credential)")
    base = url(env, "METERED_API_BASE", f"https://{app}.metered.live").rstrip("/")
    return MeteredSettings(app, base, secret_key, None if secret_key else api_key)


def turn_secret_settings(env: Mapping[str, str], error) -> tuple[str | None, tuple[str, ...]]:
    """Parse TURN_SHARED_SECRET and TURN_URLS (your own TURN server): both or neither; ``error`` is ConfigError."""
    urls = tuple(item.strip() for item in env.get("TURN_URLS", "").split(",") if item.strip())
    for url in urls:
        if not url.lower().startswith(("turn:", "turns:", "stun:", "stuns:")):
            raise error(f"TURN_URLS entry {url[:80]!r} must start with turn:, turns:, stun: or stuns:")
    kept = tuple(url for url in urls if not is_blocked_url(url))
    if urls and not any(url.lower().startswith(("turn:", "turns:")) for url in kept):
        raise error("TURN_URLS has no turn: or turns: URL (port 53 is dropped: browsers block it)")
    shared_secret = env.get("TURN_SHARED_SECRET")
    if bool(shared_secret) != bool(kept):
        missing = "TURN_URLS" if shared_secret else "TURN_SHARED_SECRET"
        raise error(f"{missing} is not set: the TURN shared-secret provider needs TURN_SHARED_SECRET and TURN_URLS")
    return shared_secret, kept


def provider_order(env: Mapping[str, str], configured: Mapping[str, bool], error) -> tuple[str, ...]:
    """Parse ICE_PROVIDERS (the order providers are tried); default: every configured one."""
    raw = env.get("ICE_PROVIDERS")
    if raw is None:
        return tuple(name for name in PROVIDERS if configured[name])
    names = tuple(item.strip() for item in raw.split(",") if item.strip())
    for name in names:
        if name not in PROVIDERS:
            raise error(f"ICE_PROVIDERS entry {name!r} is not one of {', '.join(PROVIDERS)}")
        if not configured[name]:
            raise error(f"ICE_PROVIDERS lists {name} but {NEEDED[name]} not set")
    if len(set(names)) != len(names):
        raise error("ICE_PROVIDERS lists a provider twice")
    return names
