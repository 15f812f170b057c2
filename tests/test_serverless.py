"""Serverless, in process: the build's dependency list, the Lambda adapter's client address, and no thread outliving a request."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import tomllib

import pytest

from app.config import ConfigError, load_settings
from app.core.refill import BACKOFF_CAP
from app.store.connect import connection_options
from app.web.aws_lambda import lambda_handler_for
from app.web.factory import create_app
from tests.cloudflare_stub import API_TOKEN, KEY_ID
from tests.graphql_stub import ACCOUNT_ID, ANALYTICS_TOKEN, GraphqlStub
from tests.jwt_tools import AUDIENCE, ISSUER, JwksServer, SigningKey, bearer
from tests.lambda_runtime import alb_event, http_api_event, rest_event
from tests.servers import ROOT

FORGED = "198.51.100.66"  # what a client writes in X-Forwarded-For to pass for someone else


@pytest.fixture(autouse=True)
def app_logger_propagates():
    """Serverless apps keep the app's log lines off the root logger: give it back to caplog after each test."""
    yield
    logging.getLogger("ice_servers").propagate = True


@pytest.fixture
def app_threads(monkeypatch):
    """Record every thread the app starts (its names begin with ice-); the stand-ins' own threads go on as usual."""
    started: list[str] = []
    start = threading.Thread.start

    def recording_start(thread):
        if thread.name.startswith("ice-"):
            started.append(thread.name)
        return start(thread)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    return started


def test_the_project_table_lists_exactly_the_pins_of_requirements_txt():
    """Vercel installs pyproject.toml's dependencies, the servers requirements.txt: the two name the same pins."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert sorted(project["dependencies"]) == sorted(pins)
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.]*", pin) for pin in pins)
    assert "gunicorn" in {pin.split("==")[0] for pin in project["dependencies"]}
    assert project["requires-python"] == ">=3.11"  # 3.11 (the servers, the image) and Vercel's 3.12 alike


@pytest.mark.parametrize(
    ("environ", "platform"),
    [
        ({"VERCEL": "1"}, "vercel"),
        ({"AWS_LAMBDA_FUNCTION_NAME": "ice-servers"}, "aws-lambda"),
        ({"ICE_SERVERLESS": "1"}, "ICE_SERVERLESS"),
        ({"ICE_SERVERLESS": "0", "AWS_LAMBDA_FUNCTION_NAME": "ice-servers"}, None),
        ({}, None),
    ],
)
def test_serverless_mode_is_told_by_the_platforms_own_variables(environ, platform):
    """VERCEL or AWS_LAMBDA_FUNCTION_NAME, or ICE_SERVERLESS=1 for other platforms; ICE_SERVERLESS=0 turns it off."""
    assert load_settings(environ).serverless == platform


def test_a_bad_setting_is_an_exception_serverless_and_systemexit_on_a_server(monkeypatch):
    """Lambda reports only an Exception at import as an init error: one line naming the variable, no secret in it."""
    monkeypatch.setenv("ICE_CACHE_TTL", "soon")
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "fake-token-that-must-not-leak")
    monkeypatch.setenv("CLOUDFLARE_TURN_TOKEN_ID", "fake-key-id")
    with pytest.raises(SystemExit):
        create_app()
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "ice-servers")
    with pytest.raises(ConfigError) as refused:
        create_app()
    message = str(refused.value)
    assert "ICE_CACHE_TTL" in message and "\n" not in message
    assert "fake-token-that-must-not-leak" not in message


def test_serverless_redis_connections_wait_long_enough_for_a_cold_tls_connect():
    """A cold instance connects to a managed Redis over TLS on a request: longer timeouts than a warm server's."""
    server = connection_options(load_settings({"REDIS_URL": "rediss://default:fake@redis.example.test:6379"}).redis)
    lambda_ = connection_options(load_settings({"REDIS_URL": "rediss://default:fake@redis.example.test:6379", "VERCEL": "1"}).redis)
    assert (server["socket_connect_timeout"], server["socket_timeout"]) == (0.5, 0.5)
    assert lambda_["socket_connect_timeout"] >= 2.0 and lambda_["socket_timeout"] >= 1.0


def test_serverless_without_redis_url_warns_that_every_instance_asks_the_provider(caplog, monkeypatch):
    """Every cold start says it, naming the setting (once: not again through the platform's root handler)."""
    logger = logging.getLogger("ice_servers")
    monkeypatch.setattr(logger, "handlers", [*logger.handlers, caplog.handler])
    create_app(load_settings({"VERCEL": "1", "ICE_RATE_LIMIT": "0"}))
    assert not logger.propagate
    assert "REDIS_URL is not set (vercel): every serverless instance asks the TURN provider" in caplog.text


def test_serverless_metrics_says_how_to_count_instead_of_one_instances_numbers():
    """A scrape reaches one instance at random: no sample, and where the fleet's numbers are."""
    client = create_app(load_settings({"AWS_LAMBDA_FUNCTION_NAME": "ice-servers", "ICE_RATE_LIMIT": "0"})).test_client()
    client.get("/api/ice-servers")
    answer = client.get("/metrics")
    assert answer.status_code == 200
    lines = answer.get_data(as_text=True).splitlines()
    assert lines and all(line.startswith("#") for line in lines)
    assert any("Generated new" in line for line in lines) and not any("ice_requests" in line for line in lines)


# -- the Lambda adapter's client address -------------------------------------------------------------------------


def address_seen(event: dict, **env: str) -> str:
    """Return the client address the app's TrustedProxies hands on for ``event``, with ``env``'s ICE_TRUSTED_PROXIES."""
    seen = {}

    def wsgi_app(environ, start_response):
        seen["address"] = environ["REMOTE_ADDR"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]

    from app.access.addresses import parse_networks
    from app.web.middleware import TrustedProxies

    proxies = parse_networks(load_settings(env).trusted_proxies)
    lambda_handler_for(TrustedProxies(wsgi_app, proxies))(event, None)
    return seen["address"]


def test_rest_events_take_the_address_api_gateway_saw_not_x_forwarded_for():
    """apig-wsgi takes the first X-Forwarded-For entry on REST events; we take requestContext.identity.sourceIp."""
    event = rest_event("GET", "/api/ice-servers", "203.0.113.10", {"X-Forwarded-For": f"{FORGED}, 203.0.113.10"})
    assert address_seen(event) == "203.0.113.10"


@pytest.mark.parametrize("url", [False, True], ids=["http-api", "function-url"])
def test_http_api_and_function_url_events_take_the_source_ip(url):
    """requestContext.http.sourceIp, whatever X-Forwarded-For says."""
    event = http_api_event("GET", "/api/ice-servers", "203.0.113.11", {"X-Forwarded-For": FORGED}, url=url)
    assert address_seen(event) == "203.0.113.11"


def test_alb_events_take_the_entry_the_alb_appended_and_further_only_through_trusted_proxies():
    """The ALB appends the peer it saw; entries left of it count only when that peer is in ICE_TRUSTED_PROXIES."""
    event = alb_event("GET", "/api/ice-servers", f"{FORGED}, 203.0.113.12")
    assert address_seen(event) == "203.0.113.12"
    through_cdn = alb_event("GET", "/api/ice-servers", "203.0.113.13, 192.0.2.50")
    assert address_seen(through_cdn, ICE_TRUSTED_PROXIES="192.0.2.0/24") == "203.0.113.13"
    assert address_seen(through_cdn) == "192.0.2.50"


def test_an_event_without_a_source_address_is_never_taken_for_loopback():
    """A console test event has no sourceIp: apig-wsgi would say 127.0.0.1, a trusted proxy, and X-Forwarded-For would count."""
    event = rest_event("GET", "/api/ice-servers", "203.0.113.14", {"X-Forwarded-For": FORGED})
    del event["requestContext"]["identity"]["sourceIp"]
    assert address_seen(event) == ""
    assert address_seen(alb_event("GET", "/api/ice-servers", "")) == ""


# -- no thread outlives a request ----------------------------------------------------------------------------------


def test_serverless_work_off_the_request_path_runs_inline_on_the_request_that_needs_it(cloudflare, app_threads):
    """The JWKS fetch, the usage reading and the refresh ahead: on the request, never in a thread a freeze would stop."""
    key = SigningKey("RS256", "k1")
    with JwksServer(key) as jwks, GraphqlStub() as graphql:
        settings = load_settings(
            {
                "ICE_SERVERLESS": "1",
                "CLOUDFLARE_TURN_TOKEN_ID": KEY_ID,
                "CLOUDFLARE_API_TOKEN": API_TOKEN,
                "CLOUDFLARE_API_BASE": cloudflare.base_url,
                "TURN_CREDENTIAL_TTL": "30",
                "ICE_CACHE_TTL": "2",  # refresh ahead from 1.5 s after issue: the last quarter of the window
                "ICE_ACCESS_MODE": "jwt",
                "ICE_JWKS_URL": jwks.url,
                "ICE_JWT_AUDIENCE": AUDIENCE,
                "ICE_JWT_ISSUER": ISSUER,
                "ICE_EGRESS_LIMIT_GB": "100",
                "CLOUDFLARE_ACCOUNT_ID": ACCOUNT_ID,
                "CLOUDFLARE_ANALYTICS_TOKEN": ANALYTICS_TOKEN,
                "CLOUDFLARE_GRAPHQL_URL": graphql.url,
                "ICE_RATE_LIMIT": "0",
            }
        )
        client = create_app(settings).test_client()
        headers = bearer(key.token())
        first = client.get("/api/ice-servers", headers=headers)
        assert first.status_code == 200 and "turn:" in first.get_data(as_text=True)
        # Each was done by the request itself, before it answered: nothing is left running.
        assert (jwks.fetches, graphql.count, cloudflare.call_count) == (1, 1, 1)
        time.sleep(1.6)
        second = client.get("/api/ice-servers", headers=headers)
        assert second.status_code == 200
        assert cloudflare.call_count == 2  # the refresh ahead ran on this request, once
        assert client.get("/api/ice-servers", headers=headers).status_code == 200
        assert cloudflare.call_count == 2
    assert app_threads == []


def test_the_request_that_retries_a_recovered_upstream_inline_answers_with_what_it_got(make_service, provider, clock):
    """After a failure and its cool-down, the retry runs on a request (serverless): its new credential is the answer."""
    service = make_service()  # background work runs inline, as serverless
    provider.fail(500)
    assert service.answer().source == "stun-only"  # a cold start on a failing upstream: the fallback
    provider.failure = None
    clock.advance(BACKOFF_CAP + 1)  # past any cool-down: the next request retries, on itself
    answer = service.answer()
    assert answer.source == "cloudflare" and answer.ice_servers[1]["username"] == "user-2"
    assert provider.calls == 2


def test_a_serverless_jwks_refetch_holds_no_lock_other_requests_wait_on():
    """The request that refetches old keys inline waits for it; a request whose key is held meanwhile does not."""
    from app.access.jwks import MAX_AGE, JwksCache
    from app.core.background import run_inline

    key = SigningKey("ES256", "held")
    now = [1000.0]
    with JwksServer(key) as jwks:
        cache = JwksCache(jwks.url, clock=lambda: now[0], spawn=run_inline)
        assert cache.key("held") is not None  # the first fetch
        now[0] += MAX_AGE + 1  # the keys are old: the next lookup refetches them, on its own request
        jwks.hang = True
        refetching = threading.Thread(target=cache.key, args=("held",), daemon=True)
        refetching.start()
        threading.Event().wait(0.3)  # it is in the fetch now (the provider hangs)
        other = threading.Thread(target=cache.key, args=("held",), daemon=True)
        other.start()
        other.join(2)  # well under the fetch's 3 s read timeout
        assert not other.is_alive(), "a request whose key is held waited on another request's refetch"
        assert refetching.is_alive() and jwks.fetches == 2


def test_the_request_that_takes_the_usage_reading_inline_decides_on_it(cloudflare):
    """ICE_USAGE_UNKNOWN=closed: the first request, which reads the usage itself, gets Cloudflare's credential when under the limit."""
    with GraphqlStub() as graphql:
        graphql.egress = 10**9  # 1 GB of the 100 GB limit
        settings = load_settings(
            {
                "ICE_SERVERLESS": "1",
                "CLOUDFLARE_TURN_TOKEN_ID": KEY_ID,
                "CLOUDFLARE_API_TOKEN": API_TOKEN,
                "CLOUDFLARE_API_BASE": cloudflare.base_url,
                "ICE_EGRESS_LIMIT_GB": "100",
                "ICE_USAGE_UNKNOWN": "closed",
                "CLOUDFLARE_ACCOUNT_ID": ACCOUNT_ID,
                "CLOUDFLARE_ANALYTICS_TOKEN": ANALYTICS_TOKEN,
                "CLOUDFLARE_GRAPHQL_URL": graphql.url,
                "ICE_RATE_LIMIT": "0",
            }
        )
        answer = create_app(settings).test_client().get("/api/ice-servers")
        assert graphql.count == 1
        assert answer.get_json()["source"] == "cloudflare"


def test_serverless_reads_no_project_env_file_unless_ice_env_file_names_it(monkeypatch, tmp_path):
    """A .env swept into a function's bundle is not read: the platform's variables are the settings."""
    import app.config

    dotenv = tmp_path / ".env"
    dotenv.write_text("ICE_MAX_URLS=5\n")
    dotenv.chmod(0o600)
    monkeypatch.setattr(app.config, "DEFAULT_ENV_FILE", dotenv)
    monkeypatch.delenv("ICE_ENV_FILE")
    monkeypatch.setenv("VERCEL", "1")
    try:
        assert load_settings().max_urls == 4 and "ICE_MAX_URLS" not in os.environ
        monkeypatch.setenv("ICE_ENV_FILE", str(dotenv))
        assert load_settings().max_urls == 5
    finally:
        os.environ.pop("ICE_MAX_URLS", None)


def test_work_that_fails_inline_is_logged_and_the_request_goes_on(caplog, monkeypatch):
    """As a thread's failure never reached the request, an inline one does not either, and its line names no value."""
    from app.core.background import run_inline

    logger = logging.getLogger("ice_servers")
    monkeypatch.setattr(logger, "handlers", [*logger.handlers, caplog.handler])

    def failing():
        raise ValueError("fake-secret-in-a-message")

    run_inline(failing)
    assert "Work off the request path failed (ValueError)" in caplog.text and "fake-secret" not in caplog.text
