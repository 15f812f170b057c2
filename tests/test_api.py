"""The HTTP contract through the real factory: shapes, caching headers, CORS, JSON errors."""

import logging

import pytest
from flask import request

from app import create_app
from app.config import Settings

ORIGIN = "https://app.example.test"


def test_ice_servers_answer_has_the_contract_shape(client):
    response = client.get("/api/ice-servers")
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"iceServers", "ttl", "expiresAt", "source"}
    assert body["source"] == "cloudflare" and body["ttl"] == 24
    assert body["expiresAt"] == "2027-01-15T08:00:24Z"
    assert body["iceServers"][1] == {
        "urls": ["turn:turn.example.test:3478?transport=udp"],
        "username": "user-1",
        "credential": "password-1",
    }
    assert response.headers["Cache-Control"] == "no-store"


def test_legacy_post_serves_the_same_credential_as_one_object(client, provider):
    modern = client.get("/api/ice-servers").get_json()
    legacy = client.post("/api/turn-credentials", json={"anything": True})
    assert legacy.status_code == 200 and provider.calls == 1
    assert legacy.get_json() == {
        "iceServers": {
            "urls": ["stun:stun.example.test:3478", "turn:turn.example.test:3478?transport=udp"],
            "username": modern["iceServers"][1]["username"],
            "credential": modern["iceServers"][1]["credential"],
        }
    }


def test_no_answer_may_be_stored_by_any_cache(client, make_service):
    # A stored answer hands a stale, revoked or another user's credential to the next fetch().
    default = create_app(Settings(), service=make_service()).test_client()  # the answer below Flask
    answers = [
        default.get("/api/ice-servers"),
        default.post("/api/turn-credentials"),
        default.get("/api/ice-servers?" + "x" * 3000),
        client.get("/static/no-such-file.js"),
        client.get("/api/ice-servers"),
        client.post("/api/turn-credentials"),
        client.get("/healthz"),
        client.get("/readyz"),
        client.get("/metrics"),
        client.get("/wp-login.php"),
        client.delete("/api/ice-servers"),
        client.post("/api/turn-credentials", data=b"x" * (65 * 1024)),
    ]
    assert [r.headers.get("Cache-Control") for r in answers] == ["no-store"] * len(answers)
    token_app = create_app(Settings(access_mode="token", access_secret="test-access-secret-long-enough"), service=make_service())
    refused = token_app.test_client().get("/api/ice-servers")
    assert refused.status_code == 401 and refused.headers["Cache-Control"] == "no-store"
    limited_app = create_app(Settings(rate_limit="1 per minute"), service=make_service())
    limited = [limited_app.test_client().get("/api/ice-servers") for _ in range(2)]
    assert [r.status_code for r in limited] == [200, 429] and {r.headers["Cache-Control"] for r in limited} == {"no-store"}


def test_the_client_module_may_be_revalidated_not_stored_forever(client):
    response = client.get("/static/ice-servers.js")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-cache" and response.headers.get("ETag")


def test_degraded_answer_is_not_cached(client, provider):
    provider.fail(500)
    response = client.get("/api/ice-servers")
    assert response.status_code == 200
    assert response.get_json()["source"] == "stun-only"
    assert response.headers["Cache-Control"] == "no-store"


def test_healthz_touches_nothing(client, provider):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert provider.calls == 0


def test_unknown_path_is_json_404(client):
    response = client.get("/wp-login.php")
    assert response.status_code == 404 and response.get_json() == {"error": "Not Found", "status": 404}


def test_wrong_method_is_json_405_with_allow(client):
    response = client.delete("/api/ice-servers")
    assert response.status_code == 405 and response.get_json()["status"] == 405
    assert "GET" in response.headers["Allow"]


def test_large_body_is_refused_before_it_is_read(client, provider):
    response = client.post("/api/turn-credentials", data=b"x" * (64 * 1024 + 1), content_type="application/octet-stream")
    assert response.status_code == 413
    assert response.get_json() == {"error": "request body larger than 64 KiB", "status": 413}
    assert provider.calls == 0


def test_body_at_the_limit_is_accepted(client):
    assert client.post("/api/turn-credentials", data=b"x" * (64 * 1024)).status_code == 200


def test_unexpected_failure_is_json_500_without_traceback(make_service, caplog):
    service = make_service()
    service.answer = lambda: 1 / 0
    client = create_app(Settings(), service=service).test_client()
    with caplog.at_level(logging.ERROR, logger="ice_servers"):
        response = client.get("/api/ice-servers")
    assert response.status_code == 500
    assert response.get_json() == {"error": "Internal Server Error", "status": 500}
    assert "ZeroDivisionError" in caplog.text and b"Traceback" not in response.data


def test_allowed_origin_is_echoed(client):
    response = client.get("/api/ice-servers", headers={"Origin": ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_other_origin_gets_no_cors_header(client):
    response = client.get("/api/ice-servers", headers={"Origin": "https://evil.example.test"})
    assert response.status_code == 200 and "Access-Control-Allow-Origin" not in response.headers


def test_preflight_is_answered_for_an_allowed_origin(client):
    response = client.options(
        "/api/turn-credentials",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "Content-Type"},
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_without_cors_origins_no_origin_is_allowed(make_service):
    client = create_app(Settings(), service=make_service()).test_client()
    response = client.get("/api/ice-servers", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_bad_setting_stops_the_start_with_one_line(monkeypatch):
    monkeypatch.setenv("TURN_CREDENTIAL_TTL", "forever")
    with pytest.raises(SystemExit) as excinfo:
        create_app()
    assert str(excinfo.value) == "ice-servers: configuration error: TURN_CREDENTIAL_TTL must be a whole number of seconds, got 'forever'"


def test_missing_redis_and_cloudflare_are_warned_about_at_start(monkeypatch, caplog):
    for name in ("REDIS_URL", "CLOUDFLARE_TURN_TOKEN_ID", "CLOUDFLARE_API_TOKEN", "TURN_KEY_ID", "TURN_KEY_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.WARNING, logger="ice_servers"):
        create_app().test_client().get("/api/ice-servers")
    assert "REDIS_URL is not set" in caplog.text
    assert "No TURN provider configured" in caplog.text


def test_readyz_is_200_when_the_cache_answers_and_a_credential_can_be_had(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": 200,
        "checks": {"redis": "ok", "upstream": "ok"},
        "topology": "in-process: each worker holds its own (REDIS_URL is not set)",
    }


def test_readyz_names_the_upstream_when_no_credential_can_be_had(client, provider):
    provider.fail(401)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"] == {"redis": "ok", "upstream": "failing"} and body["error"] == "not ready: upstream"


def test_readyz_stays_ready_and_names_redis_when_it_fails_while_a_credential_is_served(make_service):
    # Redis fails for every instance at once: taking them all out of service would be the outage the cache rides out.
    from app.store.redis import RedisStore

    service = make_service(store=RedisStore.from_url("redis://127.0.0.1:1/0"))
    client = create_app(Settings(), service=service).test_client()
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["checks"] == {"redis": "failing", "upstream": "ok"} and body["degraded"] == ["redis"]
    assert body["topology"].startswith("single: single server at 127.0.0.1:1 (not answering: could not connect to Redis")
    assert client.get("/api/ice-servers").get_json()["source"] == "cloudflare"


def test_readyz_is_ready_with_static_turn_servers_and_no_provider(make_service):
    static = ({"urls": ["turn:static.example.test:3478"], "username": "u", "credential": "p"},)
    client = create_app(Settings(), service=make_service(providers=[], turn_servers=static)).test_client()
    response = client.get("/readyz")
    assert response.status_code == 200 and response.get_json()["checks"] == {"redis": "ok", "upstream": "ok"}


def test_readyz_with_static_turn_servers_stays_ready_and_names_a_failing_provider(make_service, provider):
    static = ({"urls": ["turn:static.example.test:3478"], "username": "u", "credential": "p"},)
    provider.fail(401)
    client = create_app(Settings(), service=make_service(turn_servers=static)).test_client()
    body = client.get("/readyz").get_json()
    assert body["status"] == 200 and body["checks"] == {"redis": "ok", "upstream": "failing"} and body["degraded"] == ["upstream"]


def test_readyz_is_not_ready_when_it_can_hand_out_stun_only(make_service):
    client = create_app(Settings(), service=make_service(providers=[])).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["error"] == "not ready: upstream"


def test_readyz_names_both_checks_when_redis_and_the_upstream_fail(make_service, provider):
    from app.store.redis import RedisStore

    provider.fail(401)
    client = create_app(Settings(), service=make_service(store=RedisStore.from_url("redis://127.0.0.1:1/0"))).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["error"] == "not ready: redis, upstream"


def test_readyz_tells_a_stranger_the_status_and_the_checks_nothing_more(make_service):
    from app.store.redis import RedisStore

    service = make_service(store=RedisStore.from_url("redis://127.0.0.1:1/0"))
    client = create_app(Settings(), service=service).test_client()
    stranger = client.get("/readyz", environ_base={"REMOTE_ADDR": "203.0.113.50"})
    assert stranger.status_code == 200
    assert stranger.get_json() == {"status": 200, "checks": {"redis": "failing", "upstream": "ok"}, "degraded": ["redis"]}
    assert "127.0.0.1:1" not in stranger.get_data(as_text=True)
    assert "127.0.0.1:1" in client.get("/readyz").get_json()["topology"]  # an operator's address (ICE_METRICS_ALLOW)


def test_readyz_reuses_its_result_for_a_second(make_service, clock):
    from app.store.memory import MemoryStore

    class CountingStore(MemoryStore):
        pings = 0

        def ping(self):
            CountingStore.pings += 1

    client = create_app(Settings(), service=make_service(store=CountingStore(clock))).test_client()
    for _ in range(20):  # a load balancer's probes from many addresses
        assert client.get("/readyz", environ_base={"REMOTE_ADDR": "203.0.113.50"}).status_code == 200
    assert CountingStore.pings == 1
    clock.advance(1.0)
    client.get("/readyz")
    assert CountingStore.pings == 2


def test_metrics_count_answers_by_source_and_upstream_outcomes(client, provider):
    def value(text, line_start):
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))

    before = client.get("/metrics").get_data(as_text=True)
    for _ in range(3):
        client.get("/api/ice-servers")
    after = client.get("/metrics")
    text = after.get_data(as_text=True)
    assert after.mimetype == "text/plain"
    assert value(text, 'ice_requests_total{source="cloudflare"}') - value(before, 'ice_requests_total{source="cloudflare"}') == 3
    assert (
        value(text, 'ice_upstream_requests_total{outcome="success",provider="cloudflare"}')
        - value(before, 'ice_upstream_requests_total{outcome="success",provider="cloudflare"}')
        == 1
    )
    # One miss and refill; the next two come from this worker's copy, not from shared-cache reads.
    assert value(text, 'ice_cache_events_total{event="miss"}') - value(before, 'ice_cache_events_total{event="miss"}') == 1
    assert "ice_credential_expiry_timestamp_seconds" in text and "ice_upstream_request_duration_seconds_bucket" in text
    assert "password" not in text


@pytest.mark.parametrize(
    ("peer", "proxies", "forwarded", "seen"),
    [
        ("127.0.0.1", ("127.0.0.1", "::1"), "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # nginx on the box: its client
        ("::1", ("127.0.0.1", "::1"), "203.0.113.9", "203.0.113.9"),
        ("203.0.113.50", ("127.0.0.1", "::1"), "127.0.0.1", "203.0.113.50"),  # a stranger's forgery counts for nothing
        ("127.0.0.2", ("127.0.0.1", "::1"), "198.51.100.1", "127.0.0.2"),  # trusted means listed, not "loopback"
        ("10.0.1.7", ("10.0.0.0/16",), "203.0.113.9, 10.0.2.4", "203.0.113.9"),  # a load balancer, then a proxy of ours
        ("10.0.1.7", ("10.0.0.0/16",), "10.0.9.9, 10.0.2.4", "10.0.9.9"),  # nothing but proxies: the farthest
        ("10.0.1.7", ("10.0.0.0/16",), "203.0.113.9, n\u00b2t-an-address, 10.0.2.4", "10.0.2.4"),  # junk: as far as it is sound
        ("127.0.0.1", (), "203.0.113.9", "127.0.0.1"),  # ICE_TRUSTED_PROXIES=none
        ("::ffff:203.0.113.9", ("127.0.0.1",), "", "203.0.113.9"),  # IPv4-mapped: the IPv4 address
        ("10.0.1.7", ("10.0.0.0/16",), "203.0.113.9:51234", "203.0.113.9"),  # a load balancer that writes the port too
        ("10.0.1.7", ("10.0.0.0/16",), "[2001:db8::7]:443, 10.0.2.4", "2001:db8::7"),
        ("10.0.1.7", ("10.0.0.0/16",), "203.0.113.9:٥٥, 10.0.2.4", "10.0.2.4"),  # a port of other digits is junk
    ],
)
def test_client_address_comes_from_trusted_proxies_only(make_service, peer, proxies, forwarded, seen):
    app = create_app(Settings(trusted_proxies=proxies), service=make_service())
    app.add_url_rule("/test-remote-addr", "remote", lambda: {"remote": request.remote_addr})
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    response = app.test_client().get("/test-remote-addr", headers=headers, environ_base={"REMOTE_ADDR": peer})
    assert response.get_json() == {"remote": seen}


def test_readable_env_file_is_warned_about(monkeypatch, tmp_path, caplog):
    env_file = tmp_path / ".env"
    env_file.write_text("ICE_LOG_LEVEL=INFO\n")
    env_file.chmod(0o644)
    monkeypatch.setenv("ICE_ENV_FILE", str(env_file))
    with caplog.at_level(logging.WARNING, logger="ice_servers"):
        create_app()
    assert f"{env_file} is readable by group or others (mode 644): run chmod 600 {env_file}" in caplog.text
    caplog.clear()
    env_file.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="ice_servers"):
        create_app()
    assert "readable by group or others" not in caplog.text


def test_demo_page_is_404_unless_enabled(client):
    response = client.get("/demo")
    assert response.status_code == 404 and response.get_json()["status"] == 404


def test_demo_page_loads_its_script_under_a_strict_csp(make_service):
    response = create_app(Settings(demo=True), service=make_service()).test_client().get("/demo")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert b'<script type="module" src="/static/demo.js">' in response.data


def test_client_module_is_served_as_javascript(client):
    response = client.get("/static/ice-servers.js")
    assert response.status_code == 200 and response.mimetype == "text/javascript"
    assert b"export function keepFresh" in response.data and b"export async function getIceServers" in response.data


def test_long_query_string_is_json_414(client):
    response = client.get("/api/ice-servers?" + "a" * 3000)
    assert response.status_code == 414 and response.get_json() == {"error": "query string longer than 2048 bytes", "status": 414}


def test_path_or_query_that_is_not_utf8_is_json_400(client):
    # WSGI carries raw bytes as latin-1 text, as gunicorn passes them.
    for environ in ({"PATH_INFO": "/api/ice-servers\xff"}, {"QUERY_STRING": "x=\xc3\x28"}):
        response = client.get("/api/ice-servers", environ_overrides=environ)
        assert response.status_code == 400 and response.get_json()["error"] == "request path or query string is not UTF-8"


def test_rate_limit_answers_json_429_with_retry_after(make_service):
    client = create_app(Settings(rate_limit="3 per minute"), service=make_service()).test_client()
    statuses = [client.get("/api/ice-servers").status_code for _ in range(2)] + [client.post("/api/turn-credentials").status_code]
    refused = client.get("/api/ice-servers")
    assert statuses == [200, 200, 200]  # both endpoints draw on one bucket
    assert refused.status_code == 429
    assert refused.get_json() == {"error": "too many requests from this address", "status": 429}
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    other = client.get("/api/ice-servers", environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert other.status_code == 200  # another address has its own bucket


def test_health_and_preflight_are_not_rate_limited(make_service):
    client = create_app(
        Settings(rate_limit="1 per minute", cors_origins=("https://app.example.test",)), service=make_service()
    ).test_client()
    preflight = {"Origin": "https://app.example.test", "Access-Control-Request-Method": "GET"}
    assert [client.options("/api/ice-servers", headers=preflight).status_code for _ in range(3)] == [200] * 3
    assert client.get("/api/ice-servers").status_code == 200
    assert client.get("/api/ice-servers").status_code == 429
    assert {client.get(path).status_code for path in ("/healthz", "/readyz") for _ in range(3)} == {200}


MODES = [
    Settings(),
    Settings(cors_origins=(ORIGIN,)),
    Settings(access_mode="origin", cors_origins=(ORIGIN,)),
    Settings(access_mode="token", access_secret="test-access-secret-long-enough"),
    Settings(access_mode="jwt", jwt_secret="test-jwt-secret-0123456789-abcdefghij", jwt_algorithms=("HS256",)),
]


@pytest.mark.parametrize("settings", MODES, ids=["open", "open+cors", "origin", "token", "jwt"])
def test_every_access_mode_answers_the_credential_routes_below_flask(make_service, settings):
    # One implementation of the credential answer for every mode: Flask routes none of it.
    app = create_app(settings, service=make_service())
    assert not [rule.rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/")]
    response = app.test_client().get("/api/ice-servers", headers={"Origin": ORIGIN})
    assert response.headers["Cache-Control"] == "no-store" and response.mimetype == "application/json"
    if settings.access_mode in ("open", "origin"):
        assert response.status_code == 200 and response.get_json()["source"] == "cloudflare"
    else:
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"


def test_head_answers_the_headers_of_the_body_it_does_not_send(client):
    full = client.get("/api/ice-servers")
    head = client.head("/api/ice-servers")
    assert head.status_code == 200 and head.data == b"" and head.headers["Content-Length"] == full.headers["Content-Length"]


def test_an_options_request_without_cors_says_what_is_allowed(make_service):
    response = create_app(Settings(), service=make_service()).test_client().options("/api/turn-credentials")
    assert response.status_code == 200 and response.headers["Allow"] == "POST, OPTIONS"
    assert "Access-Control-Allow-Origin" not in response.headers


def test_a_preflight_from_another_origin_gets_no_permission(client):
    response = client.options("/api/ice-servers", headers={"Origin": "https://evil.example.test", "Access-Control-Request-Method": "GET"})
    assert response.status_code == 200 and "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers and response.headers["Vary"] == "Origin"


def test_a_preflight_allows_only_the_headers_the_service_reads(client):
    response = client.options(
        "/api/ice-servers",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "Authorization, X-Evil"},
    )
    assert response.headers["Access-Control-Allow-Headers"] == "authorization"
    assert response.headers["Access-Control-Max-Age"] == "600" and "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize("length", ["\u00b2", "\u0663", "12a", "-1", " 5"])
def test_a_content_length_that_is_not_ascii_digits_is_a_json_400(client, length):
    response = client.post("/api/turn-credentials", environ_overrides={"CONTENT_LENGTH": length})
    assert response.status_code == 400 and response.get_json() == {"error": "Content-Length is not a number", "status": 400}


def test_healthz_names_the_release_to_the_box_and_nothing_more_to_a_stranger(make_service, monkeypatch):
    monkeypatch.setattr("app.web.views.release_name", lambda: "20261206T000000Z-0123abcd")
    client = create_app(Settings(), service=make_service()).test_client()
    assert client.get("/healthz").get_json() == {"status": "ok", "release": "20261206T000000Z-0123abcd"}
    assert client.get("/healthz", environ_base={"REMOTE_ADDR": "203.0.113.50"}).get_json() == {"status": "ok"}


def test_an_allowed_origin_may_read_retry_after_on_a_refusal(make_service):
    # Failed before: no Access-Control-Expose-Headers, so a page of another allowed origin could not read the wait.
    settings = Settings(cors_origins=("https://app.example.test",), rate_limit="1 per hour")
    client = create_app(settings, service=make_service()).test_client()
    origin = {"Origin": "https://app.example.test"}
    assert client.get("/api/ice-servers", headers=origin).status_code == 200
    refused = client.get("/api/ice-servers", headers=origin)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 3000
    assert refused.headers["Access-Control-Allow-Origin"] == "https://app.example.test"
    assert refused.headers["Access-Control-Expose-Headers"] == "Retry-After"


@pytest.mark.parametrize(
    ("path", "length", "status"),
    [
        ("/api/turn-credentials", str(1024 * 1024), 413),
        ("/api/ice-servers?" + "q" * 3000, None, 414),
        ("/api/turn-credentials", "lots", 400),
    ],
)
def test_early_refusals_carry_the_cors_headers_of_an_allowed_origin(client, path, length, status):
    # Failed before: the refusals made before anything parses the request had no CORS headers, so fetch() in a page of
    # an allowed origin saw an opaque network error instead of the JSON answer.
    def ask(origin):
        overrides = {"CONTENT_LENGTH": length} if length else {}
        method = "POST" if path.endswith("credentials") else "GET"
        return client.open(path, method=method, headers={"Origin": origin}, environ_overrides=overrides)

    response = ask("https://app.example.test")
    assert response.status_code == status and response.get_json()["status"] == status
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.test"
    assert "Access-Control-Allow-Origin" not in ask("https://evil.example").headers
