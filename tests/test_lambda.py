"""AWS Lambda for real: wsgi.lambda_handler under awslambdaric, a Runtime API stand-in, a real Redis, the Cloudflare stand-in.

Each function is one execution environment with its own Runtime API; several of them on one Redis
are a fleet. Between invocations they may be frozen (SIGSTOP), as Lambda freezes a sandbox.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests import serverless_fleet
from tests.cloudflare_stub import API_TOKEN
from tests.lambda_runtime import LambdaFunction, alb_event, http_api_event, rest_event
from tests.servers import app_env

pytestmark = pytest.mark.xdist_group("lambda")


@pytest.fixture
def start_function(tmp_path):
    """Start Lambda execution environments with a given environment; stop them all afterwards."""
    functions = []

    def start(env, name="ice-servers"):
        function = LambdaFunction(env, tmp_path / f"{name}-{len(functions)}.log", name)
        functions.append(function)
        return function.start()

    yield start
    for function in functions:
        function.stop()


def body_of(result: dict) -> dict:
    """Decode a handler's response event's body (base64 when apig-wsgi sent it so)."""
    raw = result["body"]
    return json.loads(base64.b64decode(raw) if result.get("isBase64Encoded") else raw)


def header(result: dict, name: str) -> str | None:
    """Return a response header (single- or multi-value headers, any case)."""
    headers = {k.lower(): v for k, v in (result.get("headers") or {}).items()}
    multi = {k.lower(): v for k, v in (result.get("multiValueHeaders") or {}).items()}
    return headers.get(name.lower()) or (multi.get(name.lower()) or [None])[0]


def test_the_handler_serves_rest_http_api_function_url_and_alb_events(redis_url, cloudflare, start_function):
    """All four event kinds reach both routes, with TURN from the one credential in Redis."""
    function = start_function(app_env(cloudflare.base_url, redis_url))
    events = [
        rest_event("GET", "/api/ice-servers", "203.0.113.20"),
        http_api_event("GET", "/api/ice-servers", "203.0.113.21"),
        http_api_event("POST", "/api/turn-credentials", "203.0.113.22", {"Content-Type": "application/json"}, body="{}", url=True),
        alb_event("POST", "/api/turn-credentials", "203.0.113.23", {"Content-Type": "application/json"}, body="{}"),
    ]
    results = [function.invoke(event) for event in events]
    for result in results:
        assert result["statusCode"] == 200, result
        assert header(result, "Cache-Control") == "no-store"
    assert all("turn:" in json.dumps(body_of(result)) for result in results)
    assert body_of(results[2])["iceServers"]["username"]  # the serverless route's single-object body, as the seed users' frontends read it
    assert cloudflare.call_count == 1


def test_a_bad_setting_is_reported_as_an_init_error_naming_it(start_function):
    """An Exception at import: awslambdaric posts /runtime/init/error with one line naming the variable, no secret."""
    function = start_function({"ICE_CACHE_TTL": "soon", "CLOUDFLARE_TURN_TOKEN_ID": "fake-key", "CLOUDFLARE_API_TOKEN": API_TOKEN})
    error = function.wait_init_error()
    assert error["type"] == error["body"]["errorType"] == "ConfigError"
    message = error["body"]["errorMessage"]
    assert "ICE_CACHE_TTL" in message and "\n" not in message
    assert API_TOKEN not in json.dumps(error)
    function.process.wait(10)
    assert function.process.returncode != 0


def test_a_fleet_frozen_across_the_refresh_point_calls_the_upstream_once_per_window_and_never_serves_an_expired_credential(
    redis_url, cloudflare, start_function
):
    """Three cold instances, frozen and thawed past the refresh point, an outage and a recovery (tests/serverless_fleet.py)."""
    env = app_env(cloudflare.base_url, redis_url, **serverless_fleet.FLEET_SETTINGS)

    def start(name):
        return _Asked(start_function(env, name))

    serverless_fleet.run(start, cloudflare)


class _Asked:
    """A Lambda execution environment asked through a function URL's events."""

    def __init__(self, function: LambdaFunction):
        """Wrap ``function``."""
        self.function = function

    def ask(self, address: str) -> tuple[int, dict]:
        """GET /api/ice-servers from ``address``; return the status and the body."""
        result = self.function.invoke(http_api_event("GET", "/api/ice-servers", address, url=True))
        return result["statusCode"], body_of(result)

    def freeze(self) -> None:
        """Freeze it."""
        self.function.freeze()

    def thaw(self) -> None:
        """Thaw it."""
        self.function.thaw()


def test_the_rate_limit_is_counted_in_redis_per_source_address_across_instances(redis_url, cloudflare, start_function):
    """One address over its limit through two instances is refused with 429; X-Forwarded-For does not make it another."""
    env = app_env(cloudflare.base_url, redis_url, ICE_RATE_LIMIT="4/minute")
    first, second = start_function(env, "first"), start_function(env, "second")
    statuses = []
    for n in range(6):
        function = (first, second)[n % 2]
        forged = {"X-Forwarded-For": f"198.51.100.{n}"}
        statuses.append(function.invoke(http_api_event("GET", "/api/ice-servers", "203.0.113.40", forged))["statusCode"])
    assert statuses[:4] == [200] * 4 and statuses[4:] == [429, 429]
    refused = second.invoke(rest_event("GET", "/api/ice-servers", "203.0.113.40", {"X-Forwarded-For": "198.51.100.99"}))
    assert refused["statusCode"] == 429 and header(refused, "Retry-After")
    other = first.invoke(rest_event("GET", "/api/ice-servers", "203.0.113.41"))
    assert other["statusCode"] == 200
