"""No credential outlives its welcome in a browser: Chromium and Firefox ESR, each with its HTTP cache on.

A credential is a secret that changes: no browser may keep an answer in its HTTP cache, and the
client module schedules from answers it knows are fresh. Three ways a cached answer broke calls,
each checked in both browsers through the real service:

- a call that starts late in the service's window (the default 24 h : 23 h ratio, scaled to 72 s :
  69 s, so one hour is three seconds) must move to the next credential well before the old one
  expires, whatever the page's clock says;
- two users in one browser profile (a shared computer, sign-out then sign-in) must each get their own;
- after `revoke-turn`, a page's next fetch() must get the new credential.

Wherever in the window a call starts is swept at the real ratio in virtual time, in Node.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from app.access.identity import UserIds
from app.core.ice import new_credential
from app.providers.turn_secret import rest_credential
from app.store.redis import RedisStore
from tests.browsers import KEEP_FRESH_PAGE, browser_profile
from tests.jwt_tools import HS_SECRET, hs_token
from tests.servers import ROOT, TURN_SECRET, app_env, run_cli

pytestmark = pytest.mark.browser

BROWSERS = ["chromium", "firefox"]
CREDENTIAL_TTL, CACHE_TTL = 72, 69  # 24 h : 23 h, one hour every 3 s
HOUR = CREDENTIAL_TTL / 24
USER_ID_SECRET = "test-user-id-secret-0123456789abcdef"

FETCH = """
async (authorization) => {
  const headers = authorization ? { Authorization: "Bearer " + authorization } : {};
  const response = await fetch("/api/ice-servers", { headers });
  const body = await response.json();
  const turn = body.iceServers.find((server) => server.username);
  return { username: turn && turn.username, cacheControl: response.headers.get("Cache-Control"), ttl: body.ttl };
}
"""
FETCH_LEGACY = """
async () => {
  const response = await fetch("/api/turn-credentials", { method: "POST" });
  return { username: (await response.json()).iceServers.username, cacheControl: response.headers.get("Cache-Control") };
}
"""


@pytest.fixture(params=BROWSERS)
def profile(request):
    """Open a fresh profile of one browser, its HTTP cache on as a user's is."""
    with browser_profile(request.param) as opened:
        yield opened


def seed_late_credential(redis_url: str, turn_url: str, age: float) -> str:
    """Store a Cloudflare credential issued ``age`` seconds ago, as the service would have; return its username.

    The Cloudflare stand-in signs its credentials for the tests' coturn (TURN REST, the same secret), so
    this one relays as the stand-in's next ones do.
    """
    issued_at = time.time() - age
    username, password = rest_credential(TURN_SECRET, int(issued_at + CREDENTIAL_TTL), "seeded-late")
    servers = [{"urls": [turn_url], "username": username, "credential": password}]
    credential = new_credential(servers, "cloudflare", issued_at, CREDENTIAL_TTL, CACHE_TTL)
    assert RedisStore.from_url(redis_url).put(credential)
    return username


@pytest.mark.parametrize("arrival", [50, 60])  # seconds into the 69 s window: 16 h 40 and 20 h at the default ratio
def test_a_call_starting_late_in_the_window_moves_to_the_next_credential_well_before_expiry(
    profile, start_host, cloudflare, coturn, redis_url, arrival
):
    cloudflare.turn_urls, cloudflare.signing_secret = [coturn.turn_url], TURN_SECRET  # Cloudflare in front of coturn
    host = start_host(app_env(cloudflare.base_url, redis_url, TURN_CREDENTIAL_TTL=str(CREDENTIAL_TTL), ICE_CACHE_TTL=str(CACHE_TTL)))
    page = profile.new_page()
    page.goto(f"{host.base_url}/healthz")
    seeded = seed_late_credential(redis_url, coturn.turn_url, arrival)  # just before the call starts
    expires_at = int(seeded.split(":")[0])
    page.evaluate(KEEP_FRESH_PAGE)
    # The page's clock goes an hour back mid-call (a user, NTP, a suspended laptop): scheduling must not care.
    page.evaluate("() => { const real = Date.now; Date.now = () => real() - 3600e3; }")
    time.sleep(max(0.0, expires_at + 2 - time.time()))  # past the seeded credential's expiry
    log = page.evaluate("window.iceLog")
    state = page.evaluate("window.channel.readyState")
    page.close()

    assert log["firstUsername"] == seeded  # the call started on the late credential
    moved = [swap for swap in log["swaps"] if swap["from"] == seeded and swap["to"] != seeded]
    assert len(moved) == 2  # both peers
    lead = expires_at - max(swap["at"] for swap in moved) / 1000
    print(f"arrived {arrival} s into the window; moved {lead:.1f} s ({lead / HOUR:.1f} h at the default ratio) before expiry")
    assert lead >= HOUR, f"moved {lead:.1f} s before expiry, less than an hour at the default ratio ({HOUR:g} s)"
    (new_username,) = {swap["to"] for swap in moved}
    allocations = coturn.log_path.read_text()
    assert re.search(rf"user <{re.escape(new_username)}>: incoming packet ALLOCATE processed, success", allocations)
    assert state == "open" and not log["closed"]
    assert any(message["at"] > expires_at * 1000 for message in log["received"])  # still flowing past the old expiry


def test_two_users_in_one_profile_each_get_their_own_credential(profile, start_host, redis_url):
    env = app_env(
        None,
        redis_url,
        TURN_SHARED_SECRET=TURN_SECRET,
        TURN_URLS="turn:turn.example.test:3478",
        ICE_ACCESS_MODE="jwt",
        ICE_JWT_SECRET=HS_SECRET,
        ICE_CREDENTIAL_SCOPE="user",
        ICE_USER_ID_SECRET=USER_ID_SECRET,
    )
    host = start_host(env)
    ids = UserIds(USER_ID_SECRET)
    alice, bob = "alice@example.test", "bob@example.test"

    page = profile.new_page()
    page.goto(f"{host.base_url}/healthz")
    first = page.evaluate(FETCH, hs_token(sub=alice))
    # Alice signs out, Bob signs in: same profile, same page.
    second = page.evaluate(FETCH, hs_token(sub=bob))
    page.close()
    later = profile.new_page()  # the next page load on the shared computer
    later.goto(f"{host.base_url}/healthz")
    third = later.evaluate(FETCH, hs_token(sub=bob))
    # Through the module, with fetchOptions as the README shows them: fixed, or a function returning the signed-in user's token.
    through_module = later.evaluate(
        """async ([alice, bob]) => {
             const { getIceServers } = await import("/static/ice-servers.js");
             const username = (servers) => servers.find((server) => server.username).username;
             const as = (token) => ({ fetchOptions: { headers: { Authorization: "Bearer " + token } } });
             const fixed = async (token) => username(await getIceServers(as(token)));
             let signedIn = alice;
             const asFunction = { fetchOptions: async () => ({ headers: { Authorization: "Bearer " + signedIn } }) };
             const first = username(await getIceServers(asFunction));
             signedIn = bob;
             const second = username(await getIceServers(asFunction));
             return [await fixed(alice), await fixed(bob), first, second];
           }""",
        [hs_token(sub=alice), hs_token(sub=bob)],
    )
    later.close()

    assert first["username"].endswith(":" + ids.opaque(alice))
    assert second["username"].endswith(":" + ids.opaque(bob))
    assert third["username"].endswith(":" + ids.opaque(bob))
    assert through_module == [first["username"], second["username"]] * 2
    assert {first["cacheControl"], second["cacheControl"], third["cacheControl"]} == {"no-store"}


def test_after_revoke_turn_the_next_fetch_gets_the_new_credential(profile, start_host, cloudflare, redis_url):
    env = app_env(cloudflare.base_url, redis_url)
    host = start_host(env)
    page = profile.new_page()
    page.goto(f"{host.base_url}/healthz")
    before, legacy_before = page.evaluate(FETCH), page.evaluate(FETCH_LEGACY)
    revoked = run_cli(env, "revoke-turn")
    after, legacy_after = page.evaluate(FETCH), page.evaluate(FETCH_LEGACY)
    page.close()

    assert revoked.returncode == 0, revoked.stderr
    assert before["username"] == legacy_before["username"] == "stub-user-1"
    assert cloudflare.revoked == ["stub-user-1"]
    assert after["username"] == legacy_after["username"] == "stub-user-2"
    assert {before["cacheControl"], legacy_before["cacheControl"], after["cacheControl"], legacy_after["cacheControl"]} == {"no-store"}


def simulate(**options) -> dict:
    """Run tests/keepfresh_sim.mjs: the module in Node, in virtual time, against a model of the service's refresh points."""
    run = subprocess.run(
        ["node", str(ROOT / "tests" / "keepfresh_sim.mjs"), json.dumps(options)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("clock", ["right", "ahead", "behind", "back", "forward"])
def test_wherever_a_call_starts_in_the_default_window_it_moves_well_before_expiry(clock):
    # A call starting every 97 s of the 23 h window, lasting two credentials and an hour, with the page's clock
    # right, an hour ahead or behind, or jumping an hour back or forward mid-call. Only the call's own requests reach the service:
    # the worst case (a per-user credential, or a quiet service).
    result = simulate(credentialTtl=86400, cacheTtl=82800, step=97, clock=clock)
    assert result["runs"] == 854 and result["late"] == 0 and result["broken"] == 0
    assert result["minLead"] >= 15 * 60, result  # at least a quarter of an hour of the old credential left
    assert result["maxFetchesPerCredential"] <= 8  # halving the time left: a handful of requests per credential


def test_a_window_ending_a_minute_before_expiry_still_never_swaps_late():
    result = simulate(credentialTtl=86400, cacheTtl=86340, step=97, clock="back")
    assert result["late"] == 0 and result["broken"] == 0 and result["minLead"] > 0
