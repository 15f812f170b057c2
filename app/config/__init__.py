"""Settings: the one place the environment is read.

Every variable is parsed and checked here, once, into a frozen ``Settings``. A bad value raises
``ConfigError`` whose message is one line naming the variable, so that the operator sees what to
fix instead of a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import load_dotenv

from app.config.ice_servers import parse_ice_servers
from app.config.platform import serverless_platform
from app.config.rates import parse_rates
from app.config.redis_url import RedisTarget, parse_redis_url
from app.config.vendors import (
    KEY_ID_VARS,
    VENDOR_SECRETS,
    MeteredSettings,
    TwilioSettings,
    cloudflare_settings,
    metered_settings,
    provider_order,
    turn_secret_settings,
    twilio_settings,
)

MAX_CREDENTIAL_TTL = 172_800  # Cloudflare's documented maximum (48 h)
DEFAULT_CREDENTIAL_TTL = 86_400
DEFAULT_CACHE_TTL = 82_800
DEFAULT_API_BASE = "https://rtc.live.cloudflare.com/v1"
DEFAULT_STUN_URLS = ("stun:stun.cloudflare.com:3478",)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
# The project's own .env, wherever the process was started from (pm2, systemd, flask CLI).
DEFAULT_ENV_FILE = Path(__file__).resolve().parents[2] / ".env"

# (primary name, alias): the second guide's names first, the first guide's as aliases.
# Per client address on the credential endpoints. A page load asks once and keepFresh at half-life,
# so 200 people behind one NAT address starting a meeting at once stay well under it.
DEFAULT_RATE_LIMIT = "600 per minute"
# New per-user credentials, fleet-wide: Cloudflare publishes no TURN API limit; its general API allows
# 1,200 requests per five minutes, about 4 a second. Past it, a new user gets the shared credential.
DEFAULT_USER_MINT_RATE = "4 per second"
DEFAULT_MAX_USER_RECORDS = 50_000  # users with a credential of their own at once, fleet-wide (about 32 MB in Redis)
ACCESS_MODES = ("open", "origin", "token", "jwt")
MIN_SECRET_LENGTH = 16
MIN_JWT_SECRET_LENGTH = 32  # RFC 7518: an HMAC key at least as long as the hash (256 bits for HS256)
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
PUBLIC_KEY_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
CREDENTIAL_SCOPES = ("shared", "user")
DEFAULT_GRAPHQL_URL = "https://api.cloudflare.com/client/v4/graphql"
USAGE_UNKNOWN = ("open", "closed")
TURN_TRANSPORTS = ("udp", "tcp", "tls")
CLOUDFLARE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # account and key ids: inlined in the analytics query
DEFAULT_METRICS_ALLOW = ("127.0.0.0/8", "::1/128")
DEFAULT_TRUSTED_PROXIES = ("127.0.0.1", "::1")  # where the shipped nginx runs
# Settings that are secrets, or may hold one: each also has a NAME_FILE form (the file's content, e.g. a
# Docker or systemd credential), and none is ever printed.
SECRET_VARS = (
    "CLOUDFLARE_API_TOKEN",
    "TURN_KEY_API_TOKEN",
    "TURN_SHARED_SECRET",
    "ICE_ACCESS_SECRET",
    "ICE_JWT_SECRET",
    "ICE_USER_ID_SECRET",
    "CLOUDFLARE_ANALYTICS_TOKEN",
    "REDIS_URL",  # may carry a password
    "REDIS_SENTINEL_PASSWORD",
    "TURN_SERVERS",  # may carry static TURN credentials
    *VENDOR_SECRETS,  # Twilio's and Metered's, declared beside their settings (vendors.py)
)
WHOLE_NUMBER = re.compile(r"-?[0-9]{1,12}")  # ASCII digits only
DECIMAL = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")


class ConfigError(ValueError):
    """A setting is missing, malformed or inconsistent; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Validated configuration; build it with ``load_settings``."""

    turn_key_id: str | None = None
    api_token: str | None = field(default=None, repr=False)
    turn_shared_secret: str | None = field(default=None, repr=False)
    turn_urls: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()  # provider names in the order they are tried
    twilio: TwilioSettings | None = None
    metered: MeteredSettings | None = None
    api_base: str = DEFAULT_API_BASE
    credential_ttl: int = DEFAULT_CREDENTIAL_TTL
    cache_ttl: int = DEFAULT_CACHE_TTL
    redis_url: str | None = field(default=None, repr=False)  # as given (it may hold a password)...
    redis: RedisTarget | None = None  # ...and parsed: what the store and the rate limiter both connect to
    cors_origins: tuple[str, ...] = ()
    turn_servers: tuple[dict, ...] = ()
    stun_urls: tuple[str, ...] = DEFAULT_STUN_URLS
    log_level: str = "INFO"
    log_format: str = "text"  # text (one line per event, on stderr) or json (one JSON object per line, on stdout)
    trusted_proxies: tuple[str, ...] = DEFAULT_TRUSTED_PROXIES  # peers whose X-Forwarded-For / -Proto count
    env_file: str | None = None  # the dotenv file that was read, if any
    demo: bool = False  # serve /demo
    rate_limit: str | None = DEFAULT_RATE_LIMIT  # as written (app/config/rates.py parses it); None: no limit
    user_mint_rate: str | None = DEFAULT_USER_MINT_RATE  # new per-user credentials, fleet-wide; None: no budget
    max_user_records: int = DEFAULT_MAX_USER_RECORDS  # users with a credential of their own within one credential life
    access_mode: str = "open"  # open | origin | token | jwt
    access_secret: str | None = field(default=None, repr=False)  # signs access tokens (token mode)
    jwt_secret: str | None = field(default=None, repr=False)  # jwt mode: the HMAC key...
    jwks_url: str | None = None  # ...or the identity provider's JWKS
    jwt_algorithms: tuple[str, ...] = ()
    jwt_audience: str | None = None
    jwt_no_audience: bool = False  # ICE_JWT_NO_AUDIENCE=1: tokens must carry no aud (providers whose tokens have none)
    jwt_issuer: str | None = None
    credential_scope: str = "shared"  # shared | user (one credential per verified subject)
    user_id_secret: str | None = field(default=None, repr=False)  # keys the opaque per-user identifier
    egress_limit_bytes: int | None = None  # ICE_EGRESS_LIMIT_GB x 10^9; None: no guard
    account_id: str | None = None
    analytics_token: str | None = field(default=None, repr=False)
    graphql_url: str = DEFAULT_GRAPHQL_URL
    usage_interval: int = 300  # seconds between analytics readings, fleet-wide
    usage_unknown_closed: bool = False  # without a fresh reading: as over the limit
    turn_transports: tuple[str, ...] = ("udp", "tcp", "tls")  # TURN transports served (tls: turns:)
    max_urls: int = 4  # the most URLs in one answer, STUN included
    metrics_allow: tuple[str, ...] = DEFAULT_METRICS_ALLOW  # networks that may read /metrics
    serverless: str | None = None  # the platform (vercel, aws-lambda, ICE_SERVERLESS): no thread outlives a request


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings from ``environ`` (default: the process environment and ``.env``).

    ``.env`` is the project's own, or the file ``ICE_ENV_FILE`` names (empty: none). The real
    environment wins over it, as python-dotenv does with ``override=False``.
    """
    env_file = None
    if environ is None:
        # Serverless, the platform's variables are the settings: a .env that a local `vercel build` swept into the
        # bundle (or a deploy uploaded) is not read unless ICE_ENV_FILE names it.
        default = "" if serverless_platform() and "ICE_ENV_FILE" not in os.environ else str(DEFAULT_ENV_FILE)
        env_file = os.environ.get("ICE_ENV_FILE", default) or None
        if env_file and Path(env_file).is_file():
            try:
                load_dotenv(env_file, override=False)
            except OSError as exc:  # e.g. an admin command run as another user than the service's (.env is 0600)
                why = exc.strerror or type(exc).__name__
                raise ConfigError(f"{env_file} (ICE_ENV_FILE) cannot be read: {why}; run the command as the service's user") from None
        else:
            env_file = None
        environ = os.environ
    env = {name: value.strip() for name, value in environ.items() if value.strip()}
    _read_secret_files(env)
    _flag(env, "ICE_SERVERLESS")  # refuse a value that is neither on nor off
    serverless = serverless_platform(env)

    key_id, api_token = cloudflare_settings(env, ConfigError)

    credential_ttl = _integer(env, "TURN_CREDENTIAL_TTL", DEFAULT_CREDENTIAL_TTL, 1, MAX_CREDENTIAL_TTL)
    cache_ttl = _integer(env, "ICE_CACHE_TTL", DEFAULT_CACHE_TTL, 1, MAX_CREDENTIAL_TTL)
    if cache_ttl >= credential_ttl:
        raise ConfigError(
            f"ICE_CACHE_TTL ({cache_ttl}) must be less than TURN_CREDENTIAL_TTL ({credential_ttl}), "
            "so that every credential served has validity left"
        )

    shared_secret, turn_urls = turn_secret_settings(env, ConfigError)
    twilio, metered = twilio_settings(env, _url, ConfigError), metered_settings(env, _url, ConfigError)
    configured = {"cloudflare": bool(key_id), "twilio": bool(twilio), "metered": bool(metered), "turn-secret": bool(shared_secret)}

    return Settings(
        turn_key_id=key_id,
        api_token=api_token,
        turn_shared_secret=shared_secret,
        turn_urls=turn_urls,
        providers=provider_order(env, configured, ConfigError),
        twilio=twilio,
        metered=metered,
        api_base=_url(env, "CLOUDFLARE_API_BASE", DEFAULT_API_BASE).rstrip("/"),
        credential_ttl=credential_ttl,
        cache_ttl=cache_ttl,
        redis_url=env.get("REDIS_URL"),
        redis=_redis(env, serverless is not None),
        cors_origins=_origins(env),
        turn_servers=_turn_servers(env),
        stun_urls=_stun_urls(env),
        log_level=_log_level(env),
        log_format=_log_format(env),
        trusted_proxies=_trusted_proxies(env),
        demo=_flag(env, "ICE_DEMO"),
        rate_limit=_rate_limit(env),
        user_mint_rate=_rate_limit(env, "ICE_USER_MINT_RATE", DEFAULT_USER_MINT_RATE),
        max_user_records=_integer(env, "ICE_MAX_USER_RECORDS", DEFAULT_MAX_USER_RECORDS, 1, 10_000_000, unit="users"),
        metrics_allow=_networks(env, "ICE_METRICS_ALLOW", DEFAULT_METRICS_ALLOW),
        **_access(env),
        **_jwt(env),
        **_scope(env, api_token, shared_secret),
        **_egress(env, key_id),
        turn_transports=_transports(env),
        max_urls=_integer(env, "ICE_MAX_URLS", 4, 1, 32, unit="URLs"),
        env_file=env_file,
        serverless=serverless,
    )


def env_file_problem(path: str | None) -> str | None:
    """Say what is wrong with the dotenv file's mode (it holds the API token): readable by group or others."""
    if path is None:
        return None
    mode = stat.S_IMODE(os.stat(path).st_mode)
    return f"{path} is readable by group or others (mode {mode:03o}): run chmod 600 {path}" if mode & 0o077 else None


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int, unit: str = "seconds") -> int:
    """Parse an integer setting within [low, high]."""
    raw = env.get(name)
    if raw is None:
        return default
    if not WHOLE_NUMBER.fullmatch(raw):  # int() would take "٣", " 3" and "1_0"
        raise ConfigError(f"{name} must be a whole number of {unit}, got {raw[:20]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high} {unit}, got {value}")
    return value


def _url(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    """Return an https:// URL setting (http:// only to a loopback host, as tests and local proxies use); never echo it."""
    value = env.get(name, default)
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise ConfigError(f"{name} is not a URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigError(f"{name} must be an https:// URL")
    if parts.scheme == "http" and not _loopback(host):
        # A token or a signing key would cross the network in clear text, or from anyone on the path.
        raise ConfigError(f"{name} must be https:// (http:// is allowed only to 127.0.0.1, ::1 or localhost)")
    return value


def _loopback(host: str) -> bool:
    """Tell whether ``host`` names this machine: localhost, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origins(env: Mapping[str, str]) -> tuple[str, ...]:
    """Parse CORS_ORIGINS: a comma list of exact origins such as https://app.example.com."""
    origins = tuple(item.strip().rstrip("/") for item in env.get("CORS_ORIGINS", "").split(",") if item.strip())
    for origin in origins:
        if origin == "*":
            raise ConfigError("CORS_ORIGINS must list origins explicitly; '*' would hand credentials to any site")
        if not origin.startswith(("https://", "http://")) or "/" in origin.split("://", 1)[1]:
            raise ConfigError(f"CORS_ORIGINS entry {origin!r} is not an origin like https://app.example.com")
    return origins


def _turn_servers(env: Mapping[str, str]) -> tuple[dict, ...]:
    """Parse TURN_SERVERS: a JSON array of RTCIceServer objects."""
    raw = env.get("TURN_SERVERS")
    if raw is None:
        return ()
    try:
        servers = parse_ice_servers(json.loads(raw), require_credential=False)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TURN_SERVERS is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except ValueError as exc:
        raise ConfigError(f"TURN_SERVERS: {exc}") from None
    return tuple(servers)


def _stun_urls(env: Mapping[str, str]) -> tuple[str, ...]:
    """Parse STUN_URLS: a comma list of stun:/stuns: URLs."""
    raw = env.get("STUN_URLS")
    if raw is None:
        return DEFAULT_STUN_URLS
    urls = tuple(item.strip() for item in raw.split(",") if item.strip())
    for url in urls:
        if not url.startswith(("stun:", "stuns:")):
            raise ConfigError(f"STUN_URLS entry {url!r} must start with stun: or stuns:")
    return urls


def _read_secret_files(env: dict[str, str]) -> None:
    """Replace each ``NAME_FILE`` of a secret by the file's content under ``NAME`` (kept out of the environment)."""
    for name in SECRET_VARS:
        path = env.pop(f"{name}_FILE", None)
        if path is None:
            continue
        if env.get(name):
            raise ConfigError(f"{name} and {name}_FILE are both set: keep one")
        try:
            secret = Path(path).read_text().strip()
        except (OSError, UnicodeError) as exc:
            raise ConfigError(f"{name}_FILE cannot be read ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
        if not secret:
            raise ConfigError(f"{name}_FILE names an empty file")
        env[name] = secret


def _rate_limit(env: Mapping[str, str], name: str = "ICE_RATE_LIMIT", default: str = DEFAULT_RATE_LIMIT) -> str | None:
    """Check a rate ("600 per minute", "10/second; 100 per 5 minutes"; 0 disables): app/config/rates.py."""
    value = env.get(name, default)
    if value == "0":
        return None
    try:
        parse_rates(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must look like '600 per minute' (or 0 to disable): {exc}") from None
    return value


def _access(env: Mapping[str, str]) -> dict:
    """Parse ICE_ACCESS_MODE and, for token mode, ICE_ACCESS_SECRET."""
    mode = env.get("ICE_ACCESS_MODE", "open").lower()
    if mode not in ACCESS_MODES:
        raise ConfigError(f"ICE_ACCESS_MODE must be one of {', '.join(ACCESS_MODES)}, got {mode!r}")
    secret = env.get("ICE_ACCESS_SECRET")
    if mode == "token" and not secret:
        raise ConfigError("ICE_ACCESS_SECRET is not set: ICE_ACCESS_MODE=token needs it to check access tokens")
    if secret and len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(f"ICE_ACCESS_SECRET is shorter than {MIN_SECRET_LENGTH} characters: use a long random value")
    if mode == "origin" and not env.get("CORS_ORIGINS"):
        raise ConfigError("CORS_ORIGINS is not set: ICE_ACCESS_MODE=origin admits only the origins it lists")
    return {"access_mode": mode, "access_secret": secret}


def _jwt(env: Mapping[str, str]) -> dict:
    """Parse the jwt mode's settings: one key source, its algorithms, the audience and issuer to require."""
    secret, jwks_url = env.get("ICE_JWT_SECRET"), env.get("ICE_JWKS_URL")
    if env.get("ICE_ACCESS_MODE", "open").lower() != "jwt":
        return {}
    if secret and jwks_url:
        raise ConfigError("ICE_JWT_SECRET and ICE_JWKS_URL are both set: keep the one your identity provider signs with")
    if not secret and not jwks_url:
        raise ConfigError("ICE_JWT_SECRET or ICE_JWKS_URL is not set: ICE_ACCESS_MODE=jwt needs the provider's HMAC secret or JWKS URL")
    if secret and len(secret) < MIN_JWT_SECRET_LENGTH:
        raise ConfigError(f"ICE_JWT_SECRET is shorter than {MIN_JWT_SECRET_LENGTH} characters: HMAC keys that short can be guessed")
    no_audience = _flag(env, "ICE_JWT_NO_AUDIENCE")
    if no_audience and env.get("ICE_JWT_AUDIENCE"):
        raise ConfigError("ICE_JWT_NO_AUDIENCE=1 and ICE_JWT_AUDIENCE are both set: keep one")
    if jwks_url:
        _url(env, "ICE_JWKS_URL", None)
        # A provider's key set signs tokens for every project on it (Firebase, Google, Auth0 tenants...):
        # without both checks any of their users would pass.
        if not env.get("ICE_JWT_ISSUER"):
            raise ConfigError("ICE_JWT_ISSUER is not set: with ICE_JWKS_URL, tokens of other issuers signed by the same keys would pass")
        if not env.get("ICE_JWT_AUDIENCE") and not no_audience:
            raise ConfigError(
                "ICE_JWT_AUDIENCE is not set: with ICE_JWKS_URL, tokens for other apps of the same provider would pass "
                "(set ICE_JWT_NO_AUDIENCE=1 only if your provider's tokens carry no aud)"
            )
    allowed, default = (HMAC_ALGORITHMS, ("HS256",)) if secret else (PUBLIC_KEY_ALGORITHMS, ("RS256", "ES256"))
    raw = env.get("ICE_JWT_ALGORITHMS")
    algorithms = tuple(item.strip() for item in raw.split(",") if item.strip()) if raw else default
    for algorithm in algorithms:
        if algorithm not in HMAC_ALGORITHMS + PUBLIC_KEY_ALGORITHMS:
            raise ConfigError(f"ICE_JWT_ALGORITHMS entry {algorithm[:20]!r} is not a signing algorithm such as HS256, RS256 or ES256")
        if algorithm not in allowed:
            kind = (
                "ICE_JWT_SECRET takes HMAC algorithms (HS256...)"
                if secret
                else "ICE_JWKS_URL takes public-key algorithms (RS256, ES256...)"
            )
            raise ConfigError(f"ICE_JWT_ALGORITHMS lists {algorithm}, but {kind}: never mix HMAC and public-key algorithms")
    return {
        "jwt_secret": secret,
        "jwks_url": jwks_url,
        "jwt_algorithms": algorithms,
        "jwt_audience": env.get("ICE_JWT_AUDIENCE"),
        "jwt_no_audience": no_audience,
        "jwt_issuer": env.get("ICE_JWT_ISSUER"),
    }


def _scope(env: Mapping[str, str], api_token: str | None, shared_secret: str | None) -> dict:
    """Parse ICE_CREDENTIAL_SCOPE and the secret that keys the per-user identifier (ICE_USER_ID_SECRET).

    The identifier must be the same on every worker, host and the CLI, and across restarts, without
    being stored, and survive a rotation of any other secret: so user scope requires a secret of its own.
    """
    scope = env.get("ICE_CREDENTIAL_SCOPE", "shared").lower()
    if scope not in CREDENTIAL_SCOPES:
        raise ConfigError(f"ICE_CREDENTIAL_SCOPE must be one of {', '.join(CREDENTIAL_SCOPES)}, got {scope[:20]!r}")
    if scope == "user" and env.get("ICE_ACCESS_MODE", "open").lower() != "jwt":
        raise ConfigError("ICE_CREDENTIAL_SCOPE=user needs ICE_ACCESS_MODE=jwt: only a verified token says who the user is")
    own = env.get("ICE_USER_ID_SECRET")
    if scope == "user" and not own:
        # Keyed with the API token, a token rotation would silently re-key every user (new ids, lost revocations).
        raise ConfigError(
            "ICE_USER_ID_SECRET is not set: ICE_CREDENTIAL_SCOPE=user keys each user's opaque id with it "
            "(upgrading: set it to your current CLOUDFLARE_API_TOKEN to keep today's ids)"
        )
    if own and len(own) < MIN_JWT_SECRET_LENGTH:
        raise ConfigError(f"ICE_USER_ID_SECRET is shorter than {MIN_JWT_SECRET_LENGTH} characters: use a long random value")
    # Outside user scope the id only keys the rate limit of jwt mode: any deployment secret will do.
    return {"credential_scope": scope, "user_id_secret": own or api_token or shared_secret or env.get("ICE_JWT_SECRET")}


def _transports(env: Mapping[str, str]) -> tuple[str, ...]:
    """Parse ICE_TURN_TRANSPORTS: a comma list of udp, tcp and tls (turns:)."""
    raw = env.get("ICE_TURN_TRANSPORTS")
    if raw is None:
        return TURN_TRANSPORTS
    transports = tuple(dict.fromkeys(item.strip().lower() for item in raw.split(",") if item.strip()))
    unknown = [item for item in transports if item not in TURN_TRANSPORTS]
    if unknown or not transports:
        raise ConfigError(f"ICE_TURN_TRANSPORTS must list some of udp, tcp, tls; got {raw[:40]!r}")
    return transports


def _redis(env: Mapping[str, str], serverless: bool = False) -> RedisTarget | None:
    """Parse REDIS_URL with REDIS_CA_FILE and REDIS_SENTINEL_PASSWORD; the message never echoes a password.

    ``serverless``: every instance opens its connection cold, over TLS to a managed Redis, on a request.
    """
    url, ca_file = env.get("REDIS_URL"), env.get("REDIS_CA_FILE")
    if url is None:
        for name in ("REDIS_CA_FILE", "REDIS_SENTINEL_PASSWORD"):
            if env.get(name):
                raise ConfigError(f"{name} is set but REDIS_URL is not")
        return None
    if ca_file and not Path(ca_file).is_file():
        raise ConfigError(f"REDIS_CA_FILE names no readable file: {ca_file[:200]}")
    try:
        target = parse_redis_url(url, ca_file, env.get("REDIS_SENTINEL_PASSWORD"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if env.get("REDIS_SENTINEL_PASSWORD") and target.topology != "sentinel":
        raise ConfigError("REDIS_SENTINEL_PASSWORD is set but REDIS_URL is not redis+sentinel:// or rediss+sentinel://")
    return replace(target, cold_connections=True) if serverless else target


def _egress(env: Mapping[str, str], key_id: str | None) -> dict:
    """Parse the egress ceiling: ICE_EGRESS_LIMIT_GB and what reading the usage needs."""
    interval = _integer(env, "ICE_USAGE_CHECK_INTERVAL", 300, 1, 86_400)
    unknown = env.get("ICE_USAGE_UNKNOWN", "open").lower()
    if unknown not in USAGE_UNKNOWN:
        raise ConfigError(f"ICE_USAGE_UNKNOWN must be open or closed, got {unknown[:20]!r}")
    graphql_url = _url(env, "CLOUDFLARE_GRAPHQL_URL", DEFAULT_GRAPHQL_URL)
    raw = env.get("ICE_EGRESS_LIMIT_GB")
    if raw is None:
        return {"usage_interval": interval, "usage_unknown_closed": unknown == "closed", "graphql_url": graphql_url}
    if not DECIMAL.fullmatch(raw):
        raise ConfigError(f"ICE_EGRESS_LIMIT_GB must be a number of decimal GB (10^9 bytes), got {raw[:20]!r}")
    limit_gb = float(raw)
    if not 0 <= limit_gb < 1e9:
        raise ConfigError(f"ICE_EGRESS_LIMIT_GB must be 0 or more decimal GB, got {raw[:20]!r}")
    for name in ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_ANALYTICS_TOKEN"):
        if not env.get(name):
            raise ConfigError(f"{name} is not set: ICE_EGRESS_LIMIT_GB needs it to read the month's TURN egress")
    if not key_id:
        raise ConfigError("CLOUDFLARE_TURN_TOKEN_ID is not set: ICE_EGRESS_LIMIT_GB guards Cloudflare credentials, and none are configured")
    for name, value in (("CLOUDFLARE_ACCOUNT_ID", env["CLOUDFLARE_ACCOUNT_ID"]), (KEY_ID_VARS[0], key_id)):
        if not CLOUDFLARE_ID.match(value):
            raise ConfigError(f"{name} must be an id of letters, digits, - and _ (as Cloudflare shows it)")
    return {
        "egress_limit_bytes": int(limit_gb * 1e9),
        "account_id": env["CLOUDFLARE_ACCOUNT_ID"],
        "analytics_token": env["CLOUDFLARE_ANALYTICS_TOKEN"],
        "graphql_url": graphql_url,
        "usage_interval": interval,
        "usage_unknown_closed": unknown == "closed",
    }


def _networks(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """Parse a comma list of IP addresses or networks (CIDR)."""
    raw = env.get(name)
    if raw is None:
        return default
    networks = tuple(item.strip() for item in raw.split(",") if item.strip())
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"{name} entry {network[:50]!r} is not an IP address or network like 10.0.0.0/8") from None
    return networks


def _trusted_proxies(env: Mapping[str, str]) -> tuple[str, ...]:
    """Parse ICE_TRUSTED_PROXIES: the proxies whose X-Forwarded-For counts ("none": no proxy; X-Forwarded-For never counts)."""
    if env.get("ICE_PROXY_HOPS"):
        # It trusted the header from anyone: a client reaching gunicorn directly picked its own address.
        raise ConfigError(
            "ICE_PROXY_HOPS is no longer read: X-Forwarded-For now counts only from the addresses in ICE_TRUSTED_PROXIES "
            "(default 127.0.0.1,::1, the shipped nginx); remove ICE_PROXY_HOPS and list your proxies there if they run elsewhere"
        )
    if env.get("ICE_TRUSTED_PROXIES", "").lower() == "none":
        return ()
    return _networks(env, "ICE_TRUSTED_PROXIES", DEFAULT_TRUSTED_PROXIES)


def _flag(env: Mapping[str, str], name: str) -> bool:
    """Parse an on/off setting: 1/0, true/false, yes/no, on/off."""
    value = env.get(name, "0").lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, got {value!r}")


def _log_format(env: Mapping[str, str]) -> str:
    """Parse ICE_LOG_FORMAT."""
    value = env.get("ICE_LOG_FORMAT", "text").lower()
    if value not in LOG_FORMATS:
        raise ConfigError(f"ICE_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {value[:20]!r}")
    return value


def _log_level(env: Mapping[str, str]) -> str:
    """Parse ICE_LOG_LEVEL."""
    level = env.get("ICE_LOG_LEVEL", "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"ICE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return level
