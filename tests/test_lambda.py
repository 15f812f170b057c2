"""AWS Lambda for real: wsgi.lambda_handler under awslambdaric, a Runtime API stand-in, a real Redis, the Cloudflare stand-in.

Each function is one execution environment with its own Runtime API; several of them on one Redis
are a fleet. Between invocations they may be frozen (SIGSTOP), as Lambda freezes a sandbox.
"""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest

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


def expiry(result: dict) -> float:
    """Return the answer's expiresAt as a timestamp; the answer must carry TURN."""
    body = body_of(result)
    assert result["statusCode"] == 200, body
    assert any("username" in server for server in body["iceServers"]), body
    return datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00")).timestamp()


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


def test_three_frozen_instances_make_one_upstream_call_per_window_and_never_serve_an_expired_credential(
    redis_url, cloudflare, start_function
):
    """Cold together, frozen past the refresh point, thawed: one refresh for the fleet, then stale-if-error, never expired."""
    # A window of 8 s in a 40 s life: the refresh point is 6 s after issue (the window's last quarter).
    env = app_env(cloudflare.base_url, redis_url, TURN_CREDENTIAL_TTL="40", ICE_CACHE_TTL="8", ICE_LOG_LEVEL="INFO")
    fleet = [start_function(env, f"instance-{n}") for n in range(3)]
    expiries: list[tuple[float, float]] = []  # (when the answer arrived, its expiresAt)

    def ask(function, n: int) -> dict:
        result = function.invoke(http_api_event("GET", "/api/ice-servers", f"203.0.113.{30 + n}"))
        expiries.append((time.time(), expiry(result)))
        return result

    def ask_all() -> None:
        with ThreadPoolExecutor(len(fleet)) as pool:
            list(pool.map(ask, fleet, range(len(fleet))))

    ask_all()  # three cold starts at once
    issued = cloudflare.calls[0]["time"]
    assert cloudflare.call_count == 1
    for function in fleet:
        function.freeze()
    time.sleep(max(0.0, issued + 6.5 - time.time()))
    # Past the refresh point, each instance thawed for one invocation and frozen again the moment it has answered, as
    # Lambda does. The refresh takes the upstream a second: it must be done (and stored) before the answer, since a
    # thread left to finish it would be frozen with the Redis lock held.
    cloudflare.configure(delay=1.0)
    for n, function in enumerate(fleet):
        function.thaw()
        ask(function, n)
        function.freeze()
    cloudflare.configure(delay=0.0)
    assert cloudflare.call_count == 2
    renewed = cloudflare.calls[1]
    newcomer = start_function(env, "newcomer")  # a fourth instance, cold, while the three stay frozen
    assert body_of(ask(newcomer, 9))["iceServers"][1]["username"] == renewed["username"]
    for function in fleet:
        function.thaw()
    ask_all()
    assert cloudflare.call_count == 2

    cloudflare.configure(mode="error500")
    time.sleep(max(0.0, renewed["time"] + 8.5 - time.time()))  # past the window: stale-if-error from here on
    ask_all()
    ask_all()
    failed = [call for call in cloudflare.calls if call["status"] == 500]
    assert 1 <= len(failed) <= 2  # a cool-down holds every instance back after a failure
    assert all(expires > arrived for arrived, expires in expiries)


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
