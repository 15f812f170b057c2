"""What the browser client promises, in Debian's Chromium and Firefox ESR, against the real service.

- A call that relays keeps its TURN through the service's STUN-only answer (past the egress ceiling
  here, where docs/spend-ceiling.md promises that a long call keeps relaying) while its credential
  is valid.
- keepFresh stops when the connection is closed with close(), which fires no event.
- After a 429 with Retry-After, read across origins, no request goes out before it has passed.
- A fresh token on every fetch keeps the last good servers when the caller names whose answer it is.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.browsers import RELAY_PAIR, browser_profile
from tests.graphql_stub import ACCOUNT_ID, ANALYTICS_TOKEN, GraphqlStub
from tests.servers import TURN_SECRET, app_env, wait_until

pytestmark = pytest.mark.browser

BROWSERS = ["chromium", "firefox"]
GB = 1_000_000_000

# Two peers in one page, relay only, keepFresh on both; every answer's source is logged as the page sees it.
RELAYED_CALL = (
    """
async () => {
  const realFetch = window.fetch;
  const log = (window.iceLog = { sources: [], received: [] });
  window.fetch = async (...args) => {
    const response = await realFetch(...args);
    response.clone().json().then((body) => log.sources.push(body.source), () => {});
    return response;
  };
  const { getIceServers, keepFresh } = await import("/static/ice-servers.js");
"""
    + RELAY_PAIR
    + """  answerer.ondatachannel = ({ channel }) => (channel.onmessage = () => log.received.push(performance.now()));
  const channel = offerer.createDataChannel("chat");
  setInterval(() => channel.readyState === "open" && channel.send("hello"), 200);
  window.peers = [offerer, answerer];
  keepFresh(offerer);
  keepFresh(answerer, { restartIce: false });
  await new Promise((resolve) => (channel.onopen = resolve));
  return config.iceServers.find((server) => server.username).username;
}
"""
)

TURN_USERNAMES = """
() => window.peers.map((pc) => (pc.getConfiguration().iceServers.find((server) => server.username) || {}).username || null)
"""


@pytest.fixture(params=BROWSERS)
def profile(request):
    """Open a fresh profile of one browser."""
    with browser_profile(request.param) as opened:
        yield opened


@pytest.fixture
def graphql():
    with GraphqlStub() as stub:
        yield stub


def test_a_call_on_turn_keeps_its_turn_through_a_stun_only_answer(profile, start_host, cloudflare, graphql, coturn, redis_url):
    # Failed before: keepFresh swapped in the service's own STUN-only answer (only its own fallback was refused), and
    # setConfiguration() plus restartIce() took the relay from a call whose credential had most of its life left.
    cloudflare.turn_urls, cloudflare.signing_secret = [coturn.turn_url], TURN_SECRET  # Cloudflare in front of coturn
    env = app_env(
        cloudflare.base_url,
        redis_url,
        TURN_CREDENTIAL_TTL="16",
        ICE_CACHE_TTL="8",
        ICE_EGRESS_LIMIT_GB="1",
        CLOUDFLARE_ACCOUNT_ID=ACCOUNT_ID,
        CLOUDFLARE_ANALYTICS_TOKEN=ANALYTICS_TOKEN,
        CLOUDFLARE_GRAPHQL_URL=graphql.url,
        ICE_USAGE_CHECK_INTERVAL="1",
    )
    host = start_host(env)
    page = profile.new_page()
    page.goto(f"{host.base_url}/healthz")
    relaying = page.evaluate(RELAYED_CALL)
    graphql.egress = 2 * GB  # past the ceiling: the service answers STUN only while the call's credential lives on
    wait_until(lambda: host.get().json()["source"] == "stun-only", 10, interval=0.2, what="the service answering STUN only")
    # keepFresh looks at half the credential's remaining life (about 8 s in): it must get the STUN-only answer...
    wait_until(lambda: "stun-only" in page.evaluate("() => window.iceLog.sources"), 20, interval=0.25, what="keepFresh seeing STUN only")
    looked_at = page.evaluate("() => performance.now()")
    time.sleep(1.5)  # ...and a swap, had there been one, takes effect at once
    assert page.evaluate(TURN_USERNAMES) == [relaying, relaying]
    assert page.evaluate(f"() => window.iceLog.received.filter((at) => at > {looked_at}).length") >= 3  # still flowing
    # Once that credential has expired, keeping it helps nobody: the next look moves the call (an ICE restart may still
    # find a direct path).
    expires_at = int(relaying.split(":")[0])
    wait_until(
        lambda: page.evaluate(TURN_USERNAMES) == [None, None],
        expires_at - time.time() + 10,
        interval=0.5,
        what="moved off the expired TURN",
    )
    assert time.time() >= expires_at - 1
    page.close()


def test_keep_fresh_stops_when_the_connection_is_closed(profile, start_host, redis_url):
    # Failed before: close() fires no connectionstatechange, so the timer and the listeners lived on until the next look,
    # half a credential's life later (hours with the defaults).
    host = start_host(app_env(None, redis_url, STUN_URLS="stun:stun.example.test:3478"))
    page = profile.new_page()
    page.goto(f"{host.base_url}/healthz")
    removed = page.evaluate(
        """async () => {
             const { keepFresh } = await import("/static/ice-servers.js");
             const pc = new RTCPeerConnection();
             const removed = [];
             const remove = pc.removeEventListener.bind(pc);
             pc.removeEventListener = (type, listener) => { removed.push(type); remove(type, listener); };
             keepFresh(pc);
             await new Promise((resolve) => setTimeout(resolve, 300));
             pc.close();
             await new Promise((resolve) => setTimeout(resolve, 2500));
             return removed;
           }"""
    )
    page.close()
    assert removed == ["connectionstatechange"]


def test_after_a_429_with_retry_after_no_request_goes_out_before_it_has_passed(profile, start_host, redis_url):
    # Failed before: the client asked again 5 s after any error, and a page of another allowed origin could not even
    # read Retry-After (it was not exposed).
    page_host = start_host(app_env(None, redis_url), "page")
    api = start_host(app_env(None, redis_url, ICE_RATE_LIMIT="1 per minute", CORS_ORIGINS=page_host.base_url), "api")
    page = profile.new_page()
    page.goto(f"{page_host.base_url}/healthz")
    sent = page.evaluate(
        """async (url) => {
             const realFetch = window.fetch;
             const sent = [];
             window.fetch = (...args) => { sent.push(performance.now()); return realFetch(...args); };
             const { getIceServers, keepFresh } = await import("/static/ice-servers.js");
             const first = await getIceServers({ url });                                    // 200
             const refused = await getIceServers({ url, fetchOptions: { cacheKey: "someone" } });  // 429, Retry-After: 60
             const pc = new RTCPeerConnection();
             keepFresh(pc, { url, fetchOptions: { cacheKey: "someone" } });
             // The wait holds the service, whoever asks: another user, a new token each fetch, the other endpoint.
             let token = 0;
             const askers = [
               { url, fetchOptions: { cacheKey: "someone" } },
               { url, fetchOptions: { cacheKey: "someone-else" } },
               { url, fetchOptions: () => ({ headers: { Authorization: `Bearer token-${++token}` } }) },
               { url: url.replace("/api/ice-servers", "/api/turn-credentials"), method: "POST" },
             ];
             const started = performance.now();
             for (let turn = 0; performance.now() - started < 15500; turn++) {
               await getIceServers(askers[turn % askers.length]);
               await new Promise((resolve) => setTimeout(resolve, 400));
             }
             pc.close();
             return { count: sent.length, firstUrls: first.length, refusedUrls: refused.map((s) => [].concat(s.urls)).flat() };
           }""",
        f"{api.base_url}/api/ice-servers",
    )
    page.close()
    assert sent["firstUrls"] == 1  # the service's STUN
    assert sent["refusedUrls"] == ["stun:stun.cloudflare.com:3478"]  # the client's fallback meanwhile
    assert sent["count"] == 2  # the 200 and the 429: nothing in the 15.5 s after it, whoever asked


def test_the_last_good_servers_survive_a_new_token_each_fetch_with_a_cache_key(profile, start_host, cloudflare, redis_url):
    # Failed before: every new token was a new cache key, so a failed fetch found no last good servers and fell back.
    host = start_host(app_env(cloudflare.base_url, redis_url, TURN_CREDENTIAL_TTL="8", ICE_CACHE_TTL="4"))
    page = profile.new_page()
    page.goto(f"{host.base_url}/healthz")
    page.evaluate(
        """async () => {
             const { getIceServers } = await import("/static/ice-servers.js");
             let token = 0;
             const fresh = () => ({ headers: { Authorization: `Bearer token-${++token}` } });
             window.ask = {
               keyed: () => getIceServers({ fetchOptions: () => ({ ...fresh(), cacheKey: "user-1" }) }),
               unkeyed: () => getIceServers({ fetchOptions: fresh }),
             };
             window.turnOf = (servers) => servers.some((server) => server.username);
             window.firstAt = performance.now();
             // A cacheKey that names nobody in particular would merge users' answers: refused.
             const refusedKeys = [];
             for (const cacheKey of [null, 42, ""]) {
               await getIceServers({ fetchOptions: { cacheKey } }).catch((error) => refusedKeys.push(error instanceof TypeError));
             }
             if (refusedKeys.join() !== "true,true,true") throw new Error(`cacheKey not refused: ${refusedKeys}`);
             return [window.turnOf(await window.ask.keyed()), window.turnOf(await window.ask.unkeyed())];
           }"""
    )
    os.killpg(host.process.pid, signal.SIGKILL)  # the service is gone: every fetch fails from now on
    later = page.evaluate(
        """async () => {
             // Past the answers' reuse (half their life), within their life: the next asks fetch, and fail.
             while (performance.now() - window.firstAt < 4500) await new Promise((resolve) => setTimeout(resolve, 100));
             return [window.turnOf(await window.ask.keyed()), window.turnOf(await window.ask.unkeyed())];
           }"""
    )
    page.close()
    assert later == [True, False]  # with a cacheKey: the last good servers; without one, a new token found none


def demo_outcome(page):
    """Wait for the demo page's verdict; return it, its text and the credential's life as shown."""
    wait_until(lambda: page.evaluate("() => document.body.dataset.verdict || ''"), 20, interval=0.2, what="the demo's verdict")
    return page.evaluate(
        "() => [document.body.dataset.verdict, document.getElementById('verdict').textContent, document.getElementById('life').textContent]"
    )


def test_the_demo_on_a_stun_only_service_says_there_is_no_turn_to_try(profile, start_host, redis_url):
    # Failed before: `make run` (STUN only) got "TURN does not work from this browser's network" and a credential's life.
    host = start_host(app_env(None, redis_url, ICE_DEMO="1"))
    page = profile.new_page()
    page.goto(f"{host.base_url}/demo")
    verdict, text, life = demo_outcome(page)
    page.close()
    assert verdict == "no-turn" and "no TURN server (source: stun-only)" in text and "network" not in text
    assert life == "no credential: the service handed out no TURN server"


def test_the_demo_in_token_mode_says_why_it_cannot_ask(profile, start_host, redis_url):
    # Failed before: "Cannot read properties of undefined (reading 'flatMap')" on the 401.
    host = start_host(app_env(None, redis_url, ICE_DEMO="1", ICE_ACCESS_MODE="token", ICE_ACCESS_SECRET="test-access-secret-not-a-secret"))
    page = profile.new_page()
    page.goto(f"{host.base_url}/demo")
    verdict, text, _ = demo_outcome(page)
    page.close()
    assert verdict == "no-relay" and text.startswith("Could not ask the service: ") and "(401)" in text and "undefined" not in text
