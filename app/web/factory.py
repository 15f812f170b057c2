"""The application factory: settings, logging, the stores, providers and service, the blueprint, the CLI."""

from __future__ import annotations

import logging

from flask import Flask

from app.access.addresses import parse_networks
from app.access.gates import Gate, jwt_gate, open_gate, origin_gate, token_gate
from app.access.identity import UserIds
from app.config import ConfigError, Settings, env_file_problem, load_settings, serverless_platform
from app.config.rates import parse_rates
from app.core.background import run_inline
from app.core.breaker import CircuitBreaker
from app.core.errors import StoreUnavailable
from app.core.service import IceService
from app.core.store_policy import StorePolicy
from app.core.urls import UrlPolicy
from app.limits.rate_limit import RateLimit
from app.providers.cloudflare import CloudflareClient
from app.providers.metered import MeteredProvider
from app.providers.turn_secret import TurnSecretProvider
from app.providers.twilio import TwilioProvider
from app.spend.analytics import AnalyticsClient
from app.spend.ceiling import EgressGuard
from app.store.connect import Connection
from app.store.memory import MemoryStore
from app.store.redis import RedisStore
from app.web import cli, views
from app.web.endpoint import Cors, CredentialEndpoint
from app.web.logs import RequestIds, configure_logging
from app.web.metrics import PrometheusRecorder
from app.web.middleware import RequestLimits, TrustedProxies

MAX_BODY_BYTES = 64 * 1024


log = logging.getLogger("ice_servers")


def create_app(settings: Settings | None = None, service: IceService | None = None) -> Flask:
    """Build the app: settings, logging, store, providers, service, blueprint, CLI, errors.

    A bad setting stops the start with one line naming the variable: ``SystemExit`` on a server, and
    serverless an ``Exception`` (ConfigError), the one thing the platforms report as an init error.
    """
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            message = f"ice-servers: configuration error: {exc}"
            if serverless_platform():
                raise ConfigError(message) from None
            raise SystemExit(message) from None
    configure_logging(settings.log_level, settings.log_format, alone=settings.serverless is not None)
    warn_if_env_file_is_readable(settings.env_file)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["ICE_DEMO"] = settings.demo
    app.config["ICE_SERVERLESS"] = settings.serverless
    service = service or build_service(settings, PrometheusRecorder())
    app.extensions["ice_service"] = service
    breaker = service.policy.breaker  # one per process, in front of Redis for the store and the rate limits alike
    user_ids = UserIds(settings.user_id_secret)
    app.extensions["ice_user_ids"] = user_ids  # the CLI names users as the gate does
    views.init_app(app, service, settings)
    # Below Flask, outermost last: the request's id first, then the client's address, then the request limits, then the
    # two credential routes.
    cors = Cors(settings.cors_origins) if settings.cors_origins else None
    app.wsgi_app = CredentialEndpoint(
        app.wsgi_app,
        service,
        build_gate(settings, user_ids),
        rate_limit=build_rate_limit(settings, breaker),
        cors=cors,
        per_user=settings.credential_scope == "user",
        count_users=settings.access_mode == "jwt",
        refused=service.recorder.refused,
        shareable=build_shareable(settings),
    )
    app.wsgi_app = RequestLimits(app.wsgi_app, MAX_BODY_BYTES, cors.headers if cors else None)
    proxies = parse_networks(settings.trusted_proxies)
    app.wsgi_app = TrustedProxies(app.wsgi_app, proxies)
    app.wsgi_app = RequestIds(app.wsgi_app, proxies)
    cli.init_app(app)
    return app


def build_gate(settings: Settings, user_ids: UserIds) -> Gate:
    """Build the access gate of ICE_ACCESS_MODE."""
    if settings.access_mode == "jwt":
        return jwt_gate(build_verifier(settings).subject, user_ids)
    if settings.access_mode == "token":
        return token_gate(settings.access_secret)
    if settings.access_mode == "origin":
        return origin_gate(settings.cors_origins)
    return open_gate


def build_shareable(settings: Settings):
    """Say which answers are the same for every caller with the same Origin (the nginx site's micro-cache keeps them 1 s).

    Only the shared scope, without a token: open mode, and origin mode when the request names its Origin
    (without one, or with "null", the gate reads the Referer, which the site's cache key does not hold). Never in
    token or jwt mode.
    """
    if settings.credential_scope != "shared":
        return None
    if settings.access_mode == "open":
        return lambda environ: True
    if settings.access_mode == "origin":
        return lambda environ: environ.get("HTTP_ORIGIN") not in (None, "", "null")  # the gate's own test (origins.py)
    return None


def build_verifier(settings: Settings):
    """Build the JWT check of jwt mode; a JWKS is fetched lazily, on the first token that needs it."""
    # Imported here: PyJWT loads cryptography (about 3.5 MiB per worker), which the other modes never use.
    from app.access.jwks import JwksCache
    from app.access.jwt_tokens import JwtVerifier

    jwks = JwksCache(settings.jwks_url, spawn=_spawner(settings)) if settings.jwks_url else None
    if settings.jwt_no_audience:
        log.warning(
            "ICE_JWT_NO_AUDIENCE=1: any token of ICE_JWT_ISSUER without an aud claim is accepted, whichever app it was "
            "issued for. Use it only if your provider's access tokens carry no aud (Cognito access tokens, Clerk)."
        )
    return JwtVerifier(
        settings.jwt_algorithms,
        secret=settings.jwt_secret,
        jwks=jwks,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        no_audience=settings.jwt_no_audience,
    )


def build_service(settings: Settings, recorder: PrometheusRecorder | None = None) -> IceService:
    """Build the store and providers that ``settings`` name, warning loudly about unsafe defaults."""
    recorder = recorder or PrometheusRecorder()
    breaker = CircuitBreaker(recorder=recorder)
    if settings.redis:
        store = RedisStore.from_target(settings.redis)
        try:
            store.ping()
        except StoreUnavailable as exc:
            if not exc.answered:
                breaker.failed(str(exc))  # the first requests go on without waiting on it, and one probes a second later
            log.warning(
                "REDIS_URL (%s) does not answer (%s): starting anyway, each worker caching alone until it does",
                settings.redis.describe(),
                exc,
            )
    elif settings.serverless:
        store = MemoryStore()
        log.warning(
            "REDIS_URL is not set (%s): every serverless instance asks the TURN provider for its own credential on its "
            "cold start, and counts the rate limit alone. Set REDIS_URL to a shared Redis (docs/serverless.md).",
            settings.serverless,
        )
    else:
        store = MemoryStore()
        log.warning(
            "REDIS_URL is not set: using an in-process cache, so every worker fetches and holds its own "
            "credential. Set REDIS_URL in production."
        )
    builders = {
        "cloudflare": lambda: CloudflareClient(settings.turn_key_id, settings.api_token, settings.api_base),
        "twilio": lambda: TwilioProvider(
            settings.twilio.account_sid, settings.twilio.user, settings.twilio.secret, settings.twilio.api_base
        ),
        "metered": lambda: MeteredProvider(settings.metered.api_base, settings.metered.secret_key, settings.metered.api_key),
        "turn-secret": lambda: TurnSecretProvider(settings.turn_shared_secret, settings.turn_urls),
    }
    providers = [builders[name]() for name in settings.providers]
    if not providers:
        log.warning(
            "No TURN provider configured (CLOUDFLARE_TURN_TOKEN_ID and CLOUDFLARE_API_TOKEN, or TURN_SHARED_SECRET "
            "and TURN_URLS): serving %s. Calls behind strict NATs will fail: fine for development, not for production.",
            "the static TURN_SERVERS" if settings.turn_servers else "public STUN only",
        )
    policy = StorePolicy(store, recorder=recorder, breaker=breaker)
    return IceService(
        store,
        providers,
        credential_ttl=settings.credential_ttl,
        cache_ttl=settings.cache_ttl,
        turn_servers=settings.turn_servers,
        stun_urls=settings.stun_urls,
        per_user=settings.credential_scope == "user",
        policy=policy,
        egress=build_egress_guard(settings, policy, recorder),
        url_policy=UrlPolicy(settings.turn_transports, settings.max_urls),
        recorder=recorder,
        mint_budget=build_mint_budget(settings, breaker),
        max_user_records=settings.max_user_records,
        spawn=_spawner(settings),
    )


def _spawner(settings: Settings):
    """Return how work off the request path runs: a daemon thread on a server; serverless, inline (None: the default)."""
    return run_inline if settings.serverless else None


def build_mint_budget(settings: Settings, breaker: CircuitBreaker | None = None):
    """Build the fleet's budget of per-user mints (ICE_USER_MINT_RATE), counted in Redis like the rate limit; None: no budget.

    A burst of sign-ups would otherwise send Cloudflare a generate call per new user at once, and
    its 429 cool-down would then hold every new user back for minutes.
    """
    if settings.credential_scope != "user" or not settings.user_mint_rate:
        return None
    client = Connection(settings.redis).client if settings.redis else None
    budget = RateLimit(parse_rates(settings.user_mint_rate), client, breaker=breaker)
    return lambda: budget.hit("mints") is None


def build_egress_guard(settings: Settings, policy: StorePolicy, recorder: PrometheusRecorder) -> EgressGuard | None:
    """Build the monthly egress ceiling when ICE_EGRESS_LIMIT_GB is set; nothing is asked before the first request."""
    if settings.egress_limit_bytes is None:
        return None
    analytics = AnalyticsClient(settings.graphql_url, settings.analytics_token, settings.account_id, settings.turn_key_id)
    limit, interval, closed = settings.egress_limit_bytes, settings.usage_interval, settings.usage_unknown_closed
    return EgressGuard(analytics, policy, limit, interval, closed, recorder=recorder, spawn=_spawner(settings))


def build_rate_limit(settings: Settings, breaker: CircuitBreaker | None = None) -> RateLimit | None:
    """Build ICE_RATE_LIMIT's check, counted in the Redis REDIS_URL names (same topology, user and CA as the cache).

    Every request is counted by its address first; in jwt mode a verified user is counted too, by
    its opaque id, wherever it connects from.
    """
    if not settings.rate_limit:
        return None
    client = None
    if settings.redis:
        client = Connection(settings.redis).client
    else:
        log.warning("ICE_RATE_LIMIT is counted per worker in memory because REDIS_URL is not set")
    message = "too many requests" if settings.access_mode == "jwt" else "too many requests from this address"
    return RateLimit(parse_rates(settings.rate_limit), client, message, breaker=breaker)


def warn_if_env_file_is_readable(path: str | None) -> None:
    """Warn when the dotenv file (it holds the API token) is readable by group or others."""
    problem = env_file_problem(path)
    if problem:
        log.warning(problem)
