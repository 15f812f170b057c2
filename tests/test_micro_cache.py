"""The shipped nginx site's one-second micro-cache and its limit in front, for real: Debian's nginx over TLS, gunicorn, Redis.

The app marks what may be shared (X-Accel-Expires: 1, only for an answer that is the same for every
caller of an origin) and everything else never (0); the site keeps a marked answer one second per
method and Origin, counts each client address before the cache, and refuses with the app's JSON 429.
An operator's cache for the whole box (ignoring Cache-Control) runs beside it: nothing else is stored.
"""

from __future__ import annotations

import itertools
import json
import threading
import time

import pytest

from app.web.endpoint import CredentialEndpoint
from tests.jwt_tools import HS_SECRET, bearer, hs_token
from tests.nginx_site import KeptAlive, NginxSite
from tests.servers import app_env, run_cli

APP_A, APP_B, STRANGER = "https://a.example.test", "https://b.example.test", "https://stranger.example.test"


@pytest.fixture
def site(tmp_path, start_host, cloudflare, redis_url):
    """Start the app with the given settings behind the shipped site; return (site, app, env)."""
    started = []

    def start(**settings):
        env = app_env(cloudflare.base_url, redis_url, ICE_LOG_LEVEL="INFO", **settings)
        app = start_host(env, args="--access-logfile -", workers=2)
        workdir = tmp_path / f"nginx-{len(started)}"
        workdir.mkdir()
        nginx = NginxSite(workdir, app.port, operator_cache=True).start()
        started.append(nginx)
        return nginx, app, env

    yield start
    for nginx in started:
        nginx.stop()


def app_hits(tmp_path, path="/api/ice-servers", at_least: int = 0) -> int:
    """Count the requests for ``path`` that reached the app (gunicorn's access log).

    A worker writes its access line after the answer has left, so the last answer's line can still be
    on its way when the test reads: wait for ``at_least`` lines, then until the log has been still for
    0.3 s with no client asking (at most 5 s in all).
    """
    log, deadline = tmp_path / "host.log", time.monotonic() + 5
    count, still_since = log.read_text().count(f'"GET {path}'), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = log.read_text().count(f'"GET {path}')
        if now != count:
            count, still_since = now, time.monotonic()
        elif count >= at_least and time.monotonic() - still_since >= 0.3:
            break
    return count


def username(body: bytes) -> str:
    """Return the TURN username of an answer."""
    return next(server["username"] for server in json.loads(body)["iceServers"] if "username" in server)


@pytest.mark.deploy
def test_a_shared_answer_is_kept_a_second_and_clients_are_still_told_no_store(site, tmp_path):
    nginx, _, _ = site()
    client = KeptAlive(nginx.https_port)
    answers = [client.get() for _ in range(50)]
    assert {status for status, _, _ in answers} == {200}
    assert {headers["Cache-Control"] for _, headers, _ in answers} == {"no-store"}
    assert not any("X-Accel-Expires" in headers for _, headers, _ in answers)  # the site acts on it and strips it
    assert len({headers["X-Request-ID"] for _, headers, _ in answers}) == 50  # each its own id, kept answers too
    assert app_hits(tmp_path) <= 3  # 50 answers within about a second: one trip to the app per second (and a boundary)
    time.sleep(1.5)
    client.get()
    assert app_hits(tmp_path) <= 4
    assert not [path for path in nginx.cache.rglob("*") if path.is_file()]  # the operator's cache stored nothing
    assert [path for path in nginx.micro.rglob("*") if path.is_file()]


@pytest.mark.deploy
def test_each_origin_gets_its_own_cors_answer_and_a_stranger_none(site):
    nginx, _, _ = site(CORS_ORIGINS=f"{APP_A},{APP_B}")
    client = KeptAlive(nginx.https_port)
    for _ in range(3):  # interleaved, within the cache's second
        seen = {origin: client.get(headers={"Origin": origin})[1] for origin in (APP_A, APP_B, STRANGER)}
        assert seen[APP_A]["Access-Control-Allow-Origin"] == APP_A
        assert seen[APP_B]["Access-Control-Allow-Origin"] == APP_B
        assert "Access-Control-Allow-Origin" not in seen[STRANGER]
        assert "Access-Control-Allow-Origin" not in client.get()[1]


@pytest.mark.deploy
def test_origin_mode_never_shares_an_answer_admitted_by_its_referer(site):
    """Without an Origin the gate reads the Referer, which the cache key does not hold: such answers are never kept."""
    nginx, _, _ = site(CORS_ORIGINS=APP_A, ICE_ACCESS_MODE="origin")
    client = KeptAlive(nginx.https_port)
    assert client.get(headers={"Referer": f"{APP_A}/call"})[0] == 200
    assert client.get(headers={"Referer": f"{STRANGER}/call"})[0] == 403
    assert client.get()[0] == 403
    assert client.get(headers={"Origin": APP_A})[0] == 200
    assert client.get(headers={"Origin": STRANGER})[0] == 403


@pytest.mark.deploy
def test_per_user_credentials_through_the_site_never_reach_another_user_and_no_token_is_still_401(site, tmp_path):
    nginx, _, _ = site(
        ICE_ACCESS_MODE="jwt",
        ICE_JWT_SECRET=HS_SECRET,
        ICE_CREDENTIAL_SCOPE="user",
        ICE_USER_ID_SECRET="test-user-id-secret-0123456789-abcdef",
    )
    client = KeptAlive(nginx.https_port)
    tokens = {user: hs_token(user) for user in ("alice", "bob", "carol")}
    seen: dict[str, set[str]] = {user: set() for user in tokens}
    for _ in range(3):
        for user, token in tokens.items():
            status, headers, body = client.get(headers=bearer(token))
            assert status == 200 and headers["Cache-Control"] == "no-store"
            seen[user].add(username(body))
        assert client.get()[0] == 401  # right after a user's answer: nothing of it was kept for the next caller
    assert all(len(names) == 1 for names in seen.values())
    assert len(set().union(*seen.values())) == 3
    assert app_hits(tmp_path, at_least=12) == 12  # every request reached the app: none was answered from a cache
    assert not [path for path in nginx.micro.rglob("*") if path.is_file()]
    assert not [path for path in nginx.cache.rglob("*") if path.is_file()]


@pytest.mark.deploy
def test_revoke_turn_revokes_at_the_vendor_only_once_no_kept_answer_hands_out_the_old_credential(site, cloudflare):
    nginx, _, env = site()
    before = username(KeptAlive(nginx.https_port).get()[2])
    seen: list[tuple[float, str]] = []
    stop = threading.Event()

    def poll(index: int):
        client = KeptAlive(nginx.https_port)
        for n in itertools.count():
            if stop.is_set():
                return
            status, _, body = client.get(headers={"X-Forwarded-For": f"203.0.113.{index * 80 + n % 80}"})  # under the limit
            assert status == 200, body
            seen.append((time.time(), username(body)))
            time.sleep(0.005)

    pollers = [threading.Thread(target=poll, args=(index,), daemon=True) for index in range(3)]
    for poller in pollers:
        poller.start()
    try:
        revoked = run_cli(env, "revoke-turn")
        done = time.time()
        time.sleep(0.5)
    finally:
        stop.set()
        for poller in pollers:
            poller.join(10)
    assert revoked.returncode == 0, revoked.stderr
    assert cloudflare.revoked == [before]
    # The command returns right after the vendor revoked it: from then on, no caller got it, from the app or the cache.
    assert [name for at, name in seen if at >= done and name == before] == []
    assert {name for at, name in seen if at >= done} and before in {name for _, name in seen}


@pytest.mark.deploy
def test_no_kept_answer_outlives_its_second_even_with_the_app_down(site, start_host):
    """No stale entry: with the app stopped, concurrent callers get the JSON 503, never the last kept 200."""
    nginx, app, _ = site()
    assert KeptAlive(nginx.https_port).get()[0] == 200
    app.stop()
    time.sleep(1.1)
    statuses: list[int] = []

    def hammer():
        client = KeptAlive(nginx.https_port)
        for _ in range(30):
            statuses.append(client.get()[0])
            client.connection.close()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(statuses) == 240 and set(statuses) == {503}


@pytest.mark.deploy
def test_a_flood_from_one_address_is_refused_by_the_site_with_the_apps_json_429(site):
    nginx, _, _ = site()
    flood = KeptAlive(nginx.https_port, source="127.0.0.2")  # not a trusted proxy: its X-Forwarded-For names nobody
    statuses, refusals = [], []
    for n in range(650):
        status, headers, body = flood.get(headers={"X-Forwarded-For": f"198.51.100.{n % 250}", "Origin": APP_A})
        statuses.append(status)
        if status == 429:
            refusals.append((headers, body))
    assert statuses[:600] == [200] * 600  # the app's limit: 600 at once from idle, then one every 100 ms
    assert set(statuses[600:]) <= {200, 429} and refusals
    headers, body = refusals[0]
    assert json.loads(body) == {"error": "too many requests from this address", "status": 429}
    assert headers["Content-Type"] == "application/json" and headers["Retry-After"] == "1" and headers["Cache-Control"] == "no-store"
    assert headers["Access-Control-Allow-Origin"] == APP_A  # a page reads the refusal's Retry-After
    assert KeptAlive(nginx.https_port, source="127.0.0.3").get()[0] == 200  # another address has its own count
    # Behind a trusted proxy (loopback), the client it names in X-Forwarded-For is counted, not the proxy.
    proxy = KeptAlive(nginx.https_port)
    proxied = [proxy.get(headers={"X-Forwarded-For": "203.0.113.50"})[0] for _ in range(620)]
    assert proxied[:600] == [200] * 600 and 429 in proxied[600:]
    assert proxy.get(headers={"X-Forwarded-For": "203.0.113.51"})[0] == 200


@pytest.mark.deploy
@pytest.mark.parametrize("network", ["2001:db8::", "2001:db8:0:0:", "2001:db8:7:0:", "2001:db8:7:8:", "a0a:a0a::"])  # a0a: newline bytes
def test_an_ipv6_caller_is_counted_by_its_64_however_its_addresses_are_written(site, network):
    # Failed before for a network with a zero third or fourth group: nginx writes 2001:db8::5, not 2001:db8:0:0:0:0:0:5, and
    # the site's text pattern (the first four groups) counted each such address alone: a /64 had 2^64 counts.
    nginx, _, _ = site()
    proxy = KeptAlive(nginx.https_port)  # a trusted proxy (loopback) naming its clients: one /64, a new address each time
    statuses = [
        proxy.get(headers={"X-Forwarded-For": f"{network}{'' if network.endswith('::') else '0:0:0:'}{n:x}"})[0] for n in range(1, 621)
    ]
    assert statuses[:600] == [200] * 600 and 429 in statuses[600:]
    assert proxy.get(headers={"X-Forwarded-For": "2001:db8:0:1::5"})[0] == 200  # the next /64 has its own count
    assert proxy.get(headers={"X-Forwarded-For": "198.51.100.7"})[0] == 200  # and an IPv4 caller its own


@pytest.mark.deploy
def test_an_ipv4_caller_written_as_an_ipv4_mapped_address_is_counted_as_its_ipv4_address(site):
    # A proxy may name IPv4 clients as ::ffff:a.b.c.d (as the app does, tests/test_access.py): nginx keeps those IPv6, whose
    # first 8 bytes are zero for every IPv4 client. Failed before: all of them shared one count, the ::/64's.
    nginx, _, _ = site()
    proxy = KeptAlive(nginx.https_port)
    statuses = [proxy.get(headers={"X-Forwarded-For": "::ffff:198.51.100.7"})[0] for _ in range(620)]
    assert statuses[:600] == [200] * 600 and 429 in statuses[600:]
    assert proxy.get(headers={"X-Forwarded-For": "198.51.100.7"})[0] == 429  # the same client, written plainly
    assert proxy.get(headers={"X-Forwarded-For": "::ffff:198.51.100.8"})[0] == 200  # another client
    assert proxy.get(headers={"X-Forwarded-For": "::5"})[0] == 200  # and the ::/64 its own


@pytest.mark.unit
@pytest.mark.parametrize(
    ("shareable", "per_user", "method", "path", "limited", "expected"),
    [
        (lambda environ: True, False, "GET", "/api/ice-servers", False, "1"),
        (lambda environ: True, False, "HEAD", "/api/ice-servers", False, "1"),
        (lambda environ: True, False, "POST", "/api/turn-credentials", False, "0"),
        (lambda environ: True, False, "GET", "/api/ice-servers", True, "0"),  # a 429
        (lambda environ: True, True, "GET", "/api/ice-servers", False, "0"),  # a user's own credential
        (None, False, "GET", "/api/ice-servers", False, "0"),  # token and jwt modes
        (lambda environ: False, False, "GET", "/api/ice-servers", False, "0"),  # origin mode without an Origin
    ],
)
def test_the_app_marks_only_an_answer_that_is_the_same_for_every_caller(make_service, shareable, per_user, method, path, limited, expected):
    from app.config.rates import parse_rates
    from app.limits.rate_limit import RateLimit

    limit = RateLimit(parse_rates("1 per minute")) if limited else None
    endpoint = CredentialEndpoint(
        lambda e, s: [], make_service(), lambda environ: None, rate_limit=limit, per_user=per_user, shareable=shareable
    )
    if limited:
        limit.hit("203.0.113.1")
    seen = {}
    environ = {"PATH_INFO": path, "REQUEST_METHOD": method, "REMOTE_ADDR": "203.0.113.1", "wsgi.input": None}
    endpoint(environ, lambda status, headers: seen.update(status=status, headers=dict(headers)))
    assert seen["headers"]["X-Accel-Expires"] == expected
    assert seen["headers"]["Cache-Control"] == "no-store"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("settings", "origin", "shared"),
    [
        ({}, None, True),
        ({"ICE_ACCESS_MODE": "origin", "CORS_ORIGINS": APP_A}, APP_A, True),
        ({"ICE_ACCESS_MODE": "origin", "CORS_ORIGINS": APP_A}, None, False),  # the gate reads the Referer
        ({"ICE_ACCESS_MODE": "origin", "CORS_ORIGINS": APP_A}, "null", False),  # the gate reads the Referer
        ({"ICE_ACCESS_MODE": "token", "ICE_ACCESS_SECRET": "test-access-secret-0123456789abcdef"}, None, None),
        ({"ICE_ACCESS_MODE": "jwt", "ICE_JWT_SECRET": HS_SECRET}, None, None),
    ],
)
def test_only_answers_alike_for_every_caller_of_an_origin_are_shareable(settings, origin, shared):
    from app.config import load_settings
    from app.web.factory import build_shareable

    shareable = build_shareable(load_settings(settings))
    environ = {"HTTP_ORIGIN": origin} if origin is not None else {}
    assert (None if shareable is None else shareable(environ)) == shared
