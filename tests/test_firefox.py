"""The browser side in Debian's Firefox ESR, headless and offline, driven by puppeteer-core over WebDriver BiDi.

The same checks as in Chromium, through the same coturn: the default answer raises no five-URL
warning, the served credential gathers a relay candidate, a relay-only data channel carries
messages, and keepFresh swaps the credential on the live connection (coturn's log shows the
allocation with the new username).
"""

import re

import pytest

from tests.browsers import ANSWER_IN_A_PEER_CONNECTION, ARTIFACTS, KEEP_FRESH_PAGE, run_firefox, turn_host
from tests.servers import app_env

pytestmark = pytest.mark.browser

FIVE_URLS = "Using five or more STUN/TURN servers"


def test_the_default_answer_raises_no_five_url_warning(start_host, cloudflare, redis_url):
    host = start_host(app_env(cloudflare.base_url, redis_url))  # Cloudflare's eight URLs, the default policy
    run = run_firefox(f"{host.base_url}/healthz", script=ANSWER_IN_A_PEER_CONNECTION, waitMs=500, result="window.urlCount")
    assert run["result"] == 4
    assert not [message for message in run["messages"] if FIVE_URLS in message]


def test_five_urls_do_raise_the_warning(start_host, cloudflare, redis_url):
    # The negative control: without the cap, Firefox says so, and the test above would see it.
    host = start_host(app_env(cloudflare.base_url, redis_url, ICE_MAX_URLS="8"))
    run = run_firefox(f"{host.base_url}/healthz", script=ANSWER_IN_A_PEER_CONNECTION, waitMs=500, result="window.urlCount")
    assert run["result"] == 6
    assert [message for message in run["messages"] if FIVE_URLS in message]


def test_demo_page_in_firefox_gathers_a_relay_candidate_and_reports_each_url(start_host, coturn, redis_url):
    host = turn_host(start_host, coturn, redis_url, ICE_DEMO="1")
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "demo-firefox.png"
    run = run_firefox(
        f"{host.base_url}/demo",
        waitForSelector="body[data-verdict]",
        result="({verdict: document.body.dataset.verdict, report: JSON.parse(document.getElementById('report').value)})",
        screenshot=str(screenshot),
    )
    assert run["result"]["verdict"] == "relay"
    report = run["result"]["report"]
    assert report["source"] == "turn-secret" and report["urlCount"] == 1 and 0 < report["ttl"] <= 86400
    (row,) = report["urls"]
    assert row["url"] == coturn.turn_url and row["transport"] == "udp" and row["ok"] and row["candidate"] == "relay"
    assert "credential" not in str(report)
    assert screenshot.stat().st_size > 10_000


def test_keep_fresh_swaps_credentials_on_a_live_relay_only_channel(start_host, coturn, redis_url):
    host = turn_host(start_host, coturn, redis_url, TURN_CREDENTIAL_TTL="12", ICE_CACHE_TTL="6")
    run = run_firefox(
        f"{host.base_url}/healthz",
        script=KEEP_FRESH_PAGE,
        waitMs=15000,  # past the first credential's expiry (12 s)
        result="({log: window.iceLog, state: window.channel.readyState, now: Date.now()})",
        timeout=180,
    )
    log, state, read_at = run["result"]["log"], run["result"]["state"], run["result"]["now"]
    swaps = [swap for swap in log["swaps"] if swap["from"] != swap["to"]]
    usernames = {log["firstUsername"]} | {swap["to"] for swap in swaps}
    assert len(usernames) >= 2  # at least one new credential was applied
    for swap in swaps:  # each swap came before the credential it replaced expired ("{expiry}:user")
        assert swap["at"] / 1000 < int(swap["from"].split(":")[0])
    newest = max(usernames, key=lambda name: int(name.split(":")[0]))
    allocations = coturn.log_path.read_text()
    assert re.search(rf"user <{re.escape(newest)}>: incoming packet ALLOCATE processed, success", allocations)
    assert state == "open" and not log["closed"]
    # Still flowing after a swap: the last one with two seconds of observation after it.
    settled = [swap for swap in swaps if swap["at"] < read_at - 2000]
    assert settled and any(message["at"] > settled[-1]["at"] + 1000 for message in log["received"])
    assert not [message for message in run["messages"] if message.startswith("error:")]
