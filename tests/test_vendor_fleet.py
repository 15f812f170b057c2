"""The vendor chain on real parts: gunicorn hosts on one redis-server, the Cloudflare, Twilio and Metered stand-ins."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tests.cloudflare_stub import API_TOKEN
from tests.servers import app_env, run_cli, wait_until
from tests.vendor_stubs import (
    METERED_APP,
    METERED_SECRET_KEY,
    TWILIO_ACCOUNT_SID,
    TWILIO_AUTH_TOKEN,
)

SECRETS = (API_TOKEN, TWILIO_AUTH_TOKEN, METERED_SECRET_KEY, "test-metered-credential-api-key")
STATIC = '[{"urls": ["turn:static.example.test:3478"], "username": "static-user", "credential": "static-password"}]'


def chain_env(cloudflare, twilio, metered, redis_url, **extra):
    """Cloudflare, then Twilio, then Metered, on one Redis."""
    return app_env(
        cloudflare.base_url,
        redis_url,
        TWILIO_ACCOUNT_SID=TWILIO_ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=TWILIO_AUTH_TOKEN,
        TWILIO_API_BASE=twilio.base_url,
        METERED_APP=METERED_APP,
        METERED_SECRET_KEY=METERED_SECRET_KEY,
        METERED_API_BASE=metered.base_url,
        ICE_PROVIDERS="cloudflare,twilio,metered",
        **extra,
    )


def burst(hosts, count):
    """Send ``count`` requests at once, spread over ``hosts``; return the responses."""
    with ThreadPoolExecutor(max_workers=50) as pool:
        return list(pool.map(lambda index: hosts[index % len(hosts)].get(), range(count)))


def turn_username(response):
    return next((server["username"] for server in response.json()["iceServers"] if "username" in server), None)


def assert_no_secret(*texts):
    for text in texts:
        assert not any(secret in text for secret in SECRETS)


def test_with_cloudflare_healthy_no_other_vendor_is_asked(start_host, cloudflare, twilio, metered, redis_url):
    host = start_host(chain_env(cloudflare, twilio, metered, redis_url), workers=2)
    answers = burst([host], 40)
    assert {a.json()["source"] for a in answers} == {"cloudflare"}
    assert cloudflare.call_count == 1 and twilio.call_count == 0 and metered.call_count == 0


def test_cloudflare_down_on_a_cold_start_twilio_serves_all_and_cloudflare_returns_within_a_window(
    start_host, cloudflare, twilio, metered, redis_url
):
    cloudflare.mode = "error500"
    env = chain_env(cloudflare, twilio, metered, redis_url, TURN_CREDENTIAL_TTL="24", ICE_CACHE_TTL="12")
    hosts = [start_host(env, "a"), start_host(env, "b")]
    answers = burst(hosts, 200)
    assert [a.status_code for a in answers] == [200] * 200
    assert {a.json()["source"] for a in answers} == {"twilio"}
    assert len({turn_username(a) for a in answers}) == 1
    assert twilio.call_count == 1 and cloudflare.call_count <= 2 and metered.call_count == 0
    assert twilio.calls[0]["ttl"] == 24
    # Cloudflare recovers: the next window (the refresh ahead of Twilio's) is Cloudflare's again.
    cloudflare.mode = "ok"
    recovered = time.monotonic()
    wait_until(lambda: {a.json()["source"] for a in burst(hosts, 16)} == {"cloudflare"}, 15, interval=0.5, what="Cloudflare again")
    assert time.monotonic() - recovered < 12 + 2
    status = run_cli(env, "ice-status")
    assert "Twilio" in status.stdout and "success" in status.stdout
    assert_no_secret(status.stdout, status.stderr, *(host.log_path.read_text() for host in hosts))


def test_twilio_refusing_too_metered_serves_and_never_a_5xx(start_host, cloudflare, twilio, metered, redis_url):
    cloudflare.mode, twilio.mode = "error500", "unauthorized"
    host = start_host(chain_env(cloudflare, twilio, metered, redis_url), workers=2)
    answers = burst([host], 60)
    assert [a.status_code for a in answers] == [200] * 60
    assert {a.json()["source"] for a in answers} == {"metered"}
    assert metered.credentials and next(iter(metered.credentials.values()))["label"] == "ice-servers"
    log = host.log_path.read_text()
    assert "Twilio answered 401: Authenticate (code 20003)" in log
    assert_no_secret(log, *(a.text for a in answers))


def test_every_vendor_hanging_the_fallback_comes_within_eight_seconds(start_host, cloudflare, twilio, metered, redis_url):
    cloudflare.mode = twilio.mode = metered.mode = "hang"
    host = start_host(chain_env(cloudflare, twilio, metered, redis_url, TURN_SERVERS=STATIC), workers=2)
    started = time.monotonic()
    answers = burst([host], 20)
    assert time.monotonic() - started < 8
    assert [a.status_code for a in answers] == [200] * 20 and {a.json()["source"] for a in answers} == {"static"}
