"""The table of every setting: the one source docs/configuration.md and .env.example are generated from.

    python -m app.config.reference markdown > docs/configuration.md
    python -m app.config.reference env > .env.example

A test checks that both files are what this module makes, and that this table names exactly the
variables app/config reads. Every secret also has a ``NAME_FILE`` form (SECRET_VARS).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from app.config import SECRET_VARS


@dataclass(frozen=True)
class Variable:
    """One setting: its name, default (as the operator sees it), meaning, and the line .env.example shows."""

    name: str
    default: str
    meaning: str
    example: str = ""  # the value .env.example shows; empty: the default
    set_in_example: bool = False  # uncommented in .env.example
    alias: bool = False  # another name of the variable before it (not in .env.example)


SECTIONS: tuple[tuple[str, tuple[Variable, ...]], ...] = (
    (
        "Cloudflare TURN",
        (
            Variable(
                "CLOUDFLARE_TURN_TOKEN_ID",
                "unset",
                "TURN key id (dashboard: Realtime > TURN). Alias: `TURN_KEY_ID`",
                "your-turn-key-id",
                True,
            ),
            Variable("TURN_KEY_ID", "unset", "the first guide's name for `CLOUDFLARE_TURN_TOKEN_ID`", alias=True),
            Variable(
                "CLOUDFLARE_API_TOKEN",
                "unset",
                "TURN key API token: a secret. Only one of the key id and the token set stops the start; neither: no "
                "Cloudflare. Alias: `TURN_KEY_API_TOKEN`",
                "your-turn-key-api-token",
                True,
            ),
            Variable("TURN_KEY_API_TOKEN", "unset", "the first guide's name for `CLOUDFLARE_API_TOKEN`", alias=True),
            Variable(
                "CLOUDFLARE_API_BASE",
                "`https://rtc.live.cloudflare.com/v1`",
                "the upstream's base URL (a proxy, a test stand-in); `https://` unless its host is loopback",
                "https://rtc.live.cloudflare.com/v1",
            ),
        ),
    ),
    (
        "Your own TURN server",
        (
            Variable(
                "TURN_SHARED_SECRET",
                "unset",
                "your coturn's `static-auth-secret` (`use-auth-secret`): a secret",
                "your-coturn-static-auth-secret",
            ),
            Variable(
                "TURN_URLS",
                "unset",
                "comma-separated `turn:`, `turns:` (and `stun:`) URLs of that server; required with the secret",
                "turn:turn.example.com:3478?transport=udp,turns:turn.example.com:5349",
            ),
            Variable(
                "ICE_PROVIDERS",
                "every configured one, `cloudflare,twilio,metered,turn-secret`",
                "the order providers are tried: the first that answers wins (docs/vendors.md)",
                "cloudflare,twilio,metered,turn-secret",
            ),
        ),
    ),
    (
        "Other TURN vendors (docs/vendors.md)",
        (
            Variable(
                "TWILIO_ACCOUNT_SID", "unset", "Twilio's account SID (`AC...`): the `twilio` provider", "ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
            ),
            Variable("TWILIO_AUTH_TOKEN", "unset", "the account's auth token: a secret (or an API key below)"),
            Variable("TWILIO_API_KEY_SID", "unset", "an API key SID (`SK...`) instead of the auth token"),
            Variable("TWILIO_API_KEY_SECRET", "unset", "the API key's secret: a secret"),
            Variable("TWILIO_API_BASE", "`https://api.twilio.com`", "Twilio's API base (tests, proxies)", "https://api.twilio.com"),
            Variable("METERED_APP", "unset", "Metered's app name (`https://APP.metered.live`): the `metered` provider", "yourapp"),
            Variable("METERED_SECRET_KEY", "unset", "the app's secret key: a credential per window, revocable; a secret"),
            Variable("METERED_API_KEY", "unset", "without a secret key: the app's standing credential; a secret"),
            Variable(
                "METERED_API_BASE",
                "`https://<METERED_APP>.metered.live`",
                "Metered's API base (tests, proxies)",
                "https://yourapp.metered.live",
            ),
        ),
    ),
    (
        "Credential timing",
        (
            Variable("TURN_CREDENTIAL_TTL", "`86400`", "seconds a new credential lives; 1..172800 (Cloudflare's maximum, 48 h)", "86400"),
            Variable(
                "ICE_CACHE_TTL",
                "`82800`",
                "seconds a credential is served before it is replaced; less than `TURN_CREDENTIAL_TTL`, so every credential served "
                "has at least the difference left",
                "82800",
            ),
        ),
    ),
    (
        "The shared cache (Redis)",
        (
            Variable(
                "REDIS_URL",
                "unset",
                "`redis://`, `rediss://` (TLS), `unix://`, `redis+sentinel://h:p,h:p/SERVICE[/db]`, `redis+cluster://h:p,h:p` "
                "(and their `rediss+` forms); unset: each worker caches alone, warned at start. May hold a password: a secret",
                "redis://127.0.0.1:6379/0",
                True,
            ),
            Variable(
                "REDIS_CA_FILE",
                "unset",
                "PEM of the CA that signed the servers' certificates (TLS forms; default: the system's)",
                "/etc/ssl/redis-ca.pem",
            ),
            Variable("REDIS_SENTINEL_PASSWORD", "unset", "the sentinels' own password: a secret", "replace-with-the-sentinels-password"),
        ),
    ),
    (
        "The answer",
        (
            Variable(
                "TURN_SERVERS",
                "unset",
                "the static fallback when no credential can be had: a JSON array of RTCIceServer objects (may hold credentials: a secret)",
                '[{"urls": ["turn:turn.example.com:3478"], "username": "fallback-user", "credential": "fallback-password"}]',
            ),
            Variable(
                "STUN_URLS",
                "`stun:stun.cloudflare.com:3478`",
                "comma-separated STUN URLs served when no TURN source works",
                "stun:stun.cloudflare.com:3478",
            ),
            Variable("ICE_TURN_TRANSPORTS", "`udp,tcp,tls`", "TURN transports served (`tls`: `turns:`)", "udp,tcp,tls"),
            Variable("ICE_MAX_URLS", "`4`", "the most URLs in one answer, STUN included (1..32; browsers slow down at five)", "4"),
        ),
    ),
    (
        "Who may ask",
        (
            Variable(
                "CORS_ORIGINS",
                "unset",
                "comma-separated origins that may read the answers cross-origin (`*` is refused)",
                "https://app.example.com",
            ),
            Variable(
                "ICE_RATE_LIMIT",
                "`600 per minute`",
                "requests per client address (IPv6: per /64) and, in jwt mode, per verified user: GCRA, a burst of N then N per period "
                '(also "10/second; 100 per 5 minutes"); `0` disables',
                "600 per minute",
            ),
            Variable(
                "ICE_ACCESS_MODE",
                "`open`",
                "`open`, `origin` (only pages of `CORS_ORIGINS`), `token` (signed tokens from your backend) or `jwt` "
                "(your identity provider's JWTs)",
                "open",
            ),
            Variable(
                "ICE_ACCESS_SECRET",
                "unset",
                "signs the access tokens of `token` mode (at least 16 characters): a secret",
                "replace-with-a-long-random-value",
            ),
            Variable(
                "ICE_JWT_SECRET",
                "unset",
                "`jwt` mode: the HMAC secret your provider signs with (at least 32 characters): a secret",
                "replace-with-your-providers-jwt-secret",
            ),
            Variable(
                "ICE_JWKS_URL",
                "unset",
                "`jwt` mode: your provider's JWKS URL (exactly one of this and `ICE_JWT_SECRET`); needs `ICE_JWT_ISSUER` "
                "and `ICE_JWT_AUDIENCE`",
                "https://your-tenant.auth0.com/.well-known/jwks.json",
            ),
            Variable(
                "ICE_JWT_ALGORITHMS",
                "`HS256` with a secret, `RS256,ES256` with a JWKS",
                "the algorithms accepted; HMAC and public-key ones never mixed",
                "RS256",
            ),
            Variable("ICE_JWT_ISSUER", "unset", "a token's `iss` must equal it; required with a JWKS", "https://your-tenant.auth0.com/"),
            Variable(
                "ICE_JWT_AUDIENCE",
                "unset",
                "a token's `aud` must contain it; required with a JWKS, unless `ICE_JWT_NO_AUDIENCE=1`",
                "https://ice.example.com",
            ),
            Variable(
                "ICE_JWT_NO_AUDIENCE",
                "`0`",
                "`1`: for providers whose access tokens carry no `aud` (Cognito access tokens, Clerk): such tokens only "
                "are accepted, warned at start",
                "0",
            ),
            Variable("ICE_CREDENTIAL_SCOPE", "`shared`", "`user`: a TURN credential per verified user (`jwt` mode only)", "shared"),
            Variable(
                "ICE_USER_ID_SECRET",
                "unset",
                "keys each user's opaque id (at least 32 characters): a secret, required with `ICE_CREDENTIAL_SCOPE=user`",
                "replace-with-another-long-random-value",
            ),
            Variable(
                "ICE_USER_MINT_RATE",
                "`4 per second`",
                "new per-user credentials, fleet-wide; past it a new user gets the shared credential meanwhile; `0` disables the budget",
                "4 per second",
            ),
            Variable(
                "ICE_MAX_USER_RECORDS",
                "`50000`",
                "users with a credential of their own, fleet-wide, within one credential life (632 bytes each in Redis); "
                "past it a new user gets the shared credential until older records expire",
                "50000",
            ),
            Variable(
                "ICE_TRUSTED_PROXIES",
                "`127.0.0.1,::1`",
                "proxies (addresses or networks) whose `X-Forwarded-For`/`-Proto` count; any other peer is its own "
                "address; `none` trusts nobody",
                "127.0.0.1,::1",
            ),
            Variable(
                "ICE_METRICS_ALLOW",
                "`127.0.0.0/8,::1/128`",
                "addresses or networks that may read `/metrics`, the topology in `/readyz` and the release in `/healthz`",
                "127.0.0.0/8,::1/128",
            ),
        ),
    ),
    (
        "The spend ceiling",
        (
            Variable(
                "ICE_EGRESS_LIMIT_GB",
                "unset",
                "month-to-date Cloudflare TURN egress ceiling in decimal GB; past it no Cloudflare credential is handed out "
                "(the next provider serves: Twilio's and Metered's egress is not counted)",
                "1500",
            ),
            Variable(
                "CLOUDFLARE_ACCOUNT_ID", "unset", "the account whose TURN usage is read (required with the ceiling)", "your-account-id"
            ),
            Variable(
                "CLOUDFLARE_ANALYTICS_TOKEN",
                "unset",
                "an API token with Account Analytics read: a secret (required with the ceiling)",
                "your-analytics-token",
            ),
            Variable(
                "CLOUDFLARE_GRAPHQL_URL",
                "`https://api.cloudflare.com/client/v4/graphql`",
                "the analytics endpoint (a proxy, a test stand-in); `https://` unless its host is loopback",
                "https://api.cloudflare.com/client/v4/graphql",
            ),
            Variable("ICE_USAGE_CHECK_INTERVAL", "`300`", "seconds between usage readings, fleet-wide", "300"),
            Variable(
                "ICE_USAGE_UNKNOWN",
                "`open`",
                "without a fresh reading: `open` serves Cloudflare credentials, `closed` behaves as over the limit",
                "open",
            ),
        ),
    ),
    (
        "Running",
        (
            Variable("ICE_LOG_LEVEL", "`INFO`", "`DEBUG` also logs every read of the shared cache", "INFO"),
            Variable(
                "ICE_LOG_FORMAT",
                "`text`",
                "`text`: one line per event on stderr (pm2, journald); `json`: one JSON object per line on stdout, with a "
                "`request_id` (the container image's default)",
                "text",
            ),
            Variable("ICE_DEMO", "`0`", "`1` serves the `/demo` diagnostic page", "0"),
            Variable(
                "ICE_SERVERLESS",
                "on when `VERCEL` or `AWS_LAMBDA_FUNCTION_NAME` is set",
                "`1` on another serverless platform: no thread outlives a request (the refresh ahead, the usage reading "
                "and the JWKS fetch run on the request that needs them), longer Redis connect timeouts, `/metrics` says "
                "how to count instead; `0` turns it off (docs/serverless.md)",
                "0",
            ),
            Variable(
                "ICE_ENV_FILE",
                "the project's `.env`",
                "another dotenv file to read (set in the environment); empty: none",
                "/opt/ice-servers/.env",
            ),
        ),
    ),
)
REMOVED = {"ICE_PROXY_HOPS": "replaced by ICE_TRUSTED_PROXIES: set, it stops the start with one line saying so"}
VARIABLES = tuple(variable for _, variables in SECTIONS for variable in variables)


def markdown() -> str:
    """Return docs/configuration.md."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m app.config.reference markdown > docs/configuration.md`: edit app/config/reference.py. -->",
        "",
        "Read from the environment and from the dotenv file (`.env`, mode 600): the real environment wins. A bad value",
        "stops the start with one line naming the variable. Every secret also has a `NAME_FILE` form, holding the path of",
        f"a file with the value (a Docker or systemd credential): {', '.join(f'`{name}`' for name in SECRET_VARS)}.",
        "",
    ]
    for title, variables in SECTIONS:
        lines += [f"## {title}", "", "| variable | default | meaning |", "|---|---|---|"]
        lines += [f"| `{v.name}` | {v.default} | {v.meaning} |" for v in variables]
        lines.append("")
    lines += ["## Removed", "", *(f"- `{name}`: {why}." for name, why in REMOVED.items()), ""]
    return "\n".join(lines)


def env_example() -> str:
    """Return .env.example."""
    lines = [
        "# ice-servers settings (docs/configuration.md says what each one does). Copy to .env, chmod 600, fill in the",
        "# Cloudflare values, and uncomment what you need. The real environment wins over .env. With nothing set the",
        "# service serves public STUN only (development). Generated by `python -m app.config.reference env`.",
    ]
    for title, variables in SECTIONS:
        lines += ["", f"# -- {title} --"]
        for variable in (variable for variable in variables if not variable.alias):
            lines.append(f"# {variable.meaning.replace('`', '')}")
            value = variable.example or variable.default.strip("`")
            lines.append(f"{'' if variable.set_in_example else '# '}{variable.name}={value}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    kinds = {"markdown": markdown, "env": env_example}
    if len(sys.argv) != 2 or sys.argv[1] not in kinds:
        sys.exit("usage: python -m app.config.reference markdown|env")
    sys.stdout.write(kinds[sys.argv[1]]())
