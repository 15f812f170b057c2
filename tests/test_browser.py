"""The browser side in Debian's Chromium, driven by Playwright.

The demo page and keepFresh, against the app (gunicorn), coturn and the turn-secret provider on
loopback.
"""

import json
import re
import time

import pytest
from playwright.sync_api import sync_playwright

from app.access.signed_tokens import mint_token
from tests.browsers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, KEEP_FRESH_PAGE, turn_host
from tests.servers import TURN_SECRET, app_env, free_port, wait_until

# One worker runs the tests that share this module fixture (make test runs them in parallel).
pytestmark = [pytest.mark.xdist_group("chromium"), pytest.mark.browser]


@pytest.fixture(scope="module")
def browser():
    """Launch Debian's Chromium (never a downloaded browser)."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_demo_page_gathers_a_relay_candidate_through_coturn_and_reports_each_url(browser, start_host, coturn, redis_url):
    host = turn_host(start_host, coturn, redis_url, ICE_DEMO="1")
    page = browser.new_page()
    page.goto(f"{host.base_url}/demo")
    page.wait_for_selector("body[data-verdict]", timeout=15000)  # the page's CSP forbids eval-based waits
    assert page.locator("body").get_attribute("data-verdict") == "relay"
    assert page.locator("tr[data-ok=true][data-candidate=relay]").count() == 1
    assert page.locator("#source").inner_text() == "turn-secret" and page.locator("#count").inner_text() == "1"
    assert re.fullmatch(r"\d+ s \(until .+Z\)", page.locator("#life").inner_text())
    report = json.loads(page.locator("#report").input_value())
    assert report["urls"][0]["url"] == coturn.turn_url and report["urls"][0]["ok"] and report["urls"][0]["ms"] >= 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo-chromium.png"), full_page=True)
    assert (ARTIFACTS / "demo-chromium.png").stat().st_size > 10_000
    page.close()


def test_demo_page_reports_the_browsers_error_for_a_url_that_does_not_work(browser, start_host, coturn, redis_url):
    # A second URL on a TCP port where nothing listens: no relay there, and the browser's error in the report.
    dead = f"turn:127.0.0.1:{free_port()}?transport=tcp"
    host = start_host(app_env(None, redis_url, TURN_SHARED_SECRET=TURN_SECRET, TURN_URLS=f"{coturn.turn_url},{dead}", ICE_DEMO="1"))
    page = browser.new_page()
    page.goto(f"{host.base_url}/demo")
    page.wait_for_selector("body[data-verdict]", timeout=20000)
    report = json.loads(page.locator("#report").input_value())
    page.close()
    by_url = {row["url"]: row for row in report["urls"]}
    assert report["verdict"] == "relay" and report["urlCount"] == 2
    assert by_url[coturn.turn_url]["ok"] and not by_url[dead]["ok"]
    assert by_url[dead]["error"]["code"] == 701  # the TURN server could not be reached
    assert by_url[dead]["error"]["text"]


# The first credential ("{expiry}:user") has expired, a new one was swapped in on both peers, and messages still flow.
PAST_THE_FIRST_EXPIRY_AND_FLOWING = """
() => {
  const log = window.iceLog;
  if (!log || !log.firstUsername) return false;
  const swaps = log.swaps.filter((swap) => swap.from !== swap.to);
  const last = swaps.length ? swaps[swaps.length - 1].at : Infinity;
  return Date.now() / 1000 > Number(log.firstUsername.split(":")[0]) + 1 && swaps.length >= 2
    && log.received.some((message) => message.at > last + 1000);
}
"""


def test_keep_fresh_swaps_credentials_on_a_live_connection_before_expiry(browser, start_host, coturn, redis_url):
    host = turn_host(start_host, coturn, redis_url, TURN_CREDENTIAL_TTL="12", ICE_CACHE_TTL="6")
    context = browser.new_context()
    page = context.new_page()
    fetches = []
    page.on("request", lambda request: "/api/ice-servers" in request.url and fetches.append(request.url))
    page.goto(f"{host.base_url}/healthz")  # any page of the app's origin, to import the module from
    page.evaluate(KEEP_FRESH_PAGE)
    page.wait_for_function(PAST_THE_FIRST_EXPIRY_AND_FLOWING, timeout=30000)
    log = page.evaluate("window.iceLog")
    state = page.evaluate("window.channel.readyState")
    context.close()

    swaps = [swap for swap in log["swaps"] if swap["from"] != swap["to"]]
    usernames = {log["firstUsername"]} | {swap["to"] for swap in swaps}
    assert len(usernames) >= 2  # at least one new credential was applied
    assert len(log["swaps"]) == len(swaps) == 2 * (len(usernames) - 1)  # on both peers, once per credential
    assert 2 <= len(fetches) <= 5  # refreshed at half-life, not in a loop
    for swap in swaps:  # each swap came before the credential it replaced expired ("{expiry}:user")
        assert swap["at"] / 1000 < int(swap["from"].split(":")[0])
    newest = max(usernames, key=lambda name: int(name.split(":")[0]))
    allocations = (coturn.log_path).read_text()
    assert re.search(rf"user <{re.escape(newest)}>: incoming packet ALLOCATE processed, success", allocations)
    assert state == "open" and not log["closed"]
    assert any(message["at"] > swaps[-1]["at"] + 1000 for message in log["received"])  # still flowing after


CLIENT_PAGE = """
async () => {
  const { getIceServers } = await import("/static/ice-servers.js");
  const legacy = await getIceServers({ url: "/api/turn-credentials", method: "POST" });
  const first = await getIceServers();
  const cached = await getIceServers();
  window.results = { legacy, first, cached };
}
"""


def test_client_caches_reads_the_legacy_form_and_falls_back(browser, start_host, cloudflare, redis_url):
    # Cloudflare's first credential lives its whole 4 s from the first request (a shared secret's follows the clock's windows).
    env = app_env(cloudflare.base_url, redis_url, TURN_CREDENTIAL_TTL="4", ICE_CACHE_TTL="2")
    host = start_host(env)
    page = browser.new_page()
    fetches = []
    page.on("request", lambda request: "/api/" in request.url and fetches.append(request.method))
    page.goto(f"{host.base_url}/healthz")
    asked_at = time.monotonic()
    page.evaluate(CLIENT_PAGE)
    results = page.evaluate("window.results")
    first_turn = next(server["username"] for server in results["first"] if "username" in server)
    assert results["legacy"][0]["username"] == first_turn  # one object, same credential
    assert results["cached"] == results["first"] and fetches == ["POST", "GET"]  # the second call came from cache

    aborted = []
    page.route("**/api/ice-servers", lambda route: (aborted.append(time.monotonic()), route.abort()))  # the service goes away
    ask = "import('/static/ice-servers.js').then((m) => m.getIceServers())"
    # Past half the 4 s ttl the client asks again, fails, and answers with the last good servers, still valid.
    stale = wait_until(lambda: (servers := page.evaluate(ask)) and aborted and servers, 10, interval=0.2, what="a failed re-fetch")
    assert stale == results["first"]
    assert aborted[0] - asked_at >= 1.5  # not before half their life
    # Past their expiry (and past the 5 s retry delay), the fallback: never before the credential ran out.
    fallback = wait_until(lambda: (servers := page.evaluate(ask)) != results["first"] and servers, 15, interval=0.2, what="the fallback")
    assert fallback == [{"urls": ["stun:stun.cloudflare.com:3478"]}]
    assert time.monotonic() - asked_at >= 2.9
    page.close()


def test_client_sends_a_fresh_token_from_a_function(browser, start_host, redis_url):
    secret = "test-access-secret-long-enough"
    env = app_env(
        None,
        redis_url,
        TURN_SHARED_SECRET=TURN_SECRET,
        TURN_URLS="turn:turn.example.test:3478",
        ICE_ACCESS_MODE="token",
        ICE_ACCESS_SECRET=secret,
    )
    host = start_host(env)
    token = mint_token(secret, int(time.time()) + 60)  # what the operator's backend would hand the page
    page = browser.new_page()
    page.goto(f"{host.base_url}/healthz")
    with_token = page.evaluate(
        """async (token) => {
             const { getIceServers } = await import("/static/ice-servers.js");
             return getIceServers({ fetchOptions: async () => ({ headers: { Authorization: "Bearer " + token } }) });
           }""",
        token,
    )
    without = page.evaluate("import('/static/ice-servers.js').then((m) => m.getIceServers({ url: '/api/ice-servers?no-token' }))")
    page.close()
    assert with_token[0]["urls"] == ["turn:turn.example.test:3478"] and "username" in with_token[0]
    assert without == [{"urls": ["stun:stun.cloudflare.com:3478"]}]  # 401: the client falls back to STUN
