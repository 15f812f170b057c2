"""The credentials work: a real TURN server relays a real WebRTC data channel.

coturn (Debian's) relays two aiortc peers, relay only, configured from the service's
/api/ice-servers as served by gunicorn.
"""

import datetime
import time

from tests.servers import TURN_SECRET, app_env
from tests.webrtc import relay_candidates, relay_chat


def all_urls(answer: dict) -> list[str]:
    """Return every URL of an answer."""
    return [url for server in answer["iceServers"] for url in server["urls"]]


def test_turn_secret_provider_relays_a_data_channel_through_coturn(start_host, coturn, redis_url):
    env = app_env(None, redis_url, TURN_SHARED_SECRET=TURN_SECRET, TURN_URLS=f"stun:127.0.0.1:{coturn.port},{coturn.turn_url}")
    answer = start_host(env).get().json()
    assert answer["source"] == "turn-secret"
    assert relay_chat(answer["iceServers"]) == "hello through the relay"


def test_cloudflare_answer_is_passed_through_intact_and_relays(start_host, coturn, cloudflare, redis_url):
    cloudflare.turn_urls, cloudflare.signing_secret = [coturn.turn_url], TURN_SECRET
    answer = start_host(app_env(cloudflare.base_url, redis_url)).get().json()
    assert answer["source"] == "cloudflare"
    assert not [url for url in all_urls(answer) if ":53?" in url or url.endswith(":53")]  # filtered
    assert coturn.turn_url in all_urls(answer)
    assert relay_chat(answer["iceServers"]) == "hello through the relay"


def test_credential_signed_with_another_secret_does_not_relay(start_host, coturn, cloudflare, redis_url):
    cloudflare.turn_urls, cloudflare.signing_secret = [coturn.turn_url], "some-other-secret"
    answer = start_host(app_env(cloudflare.base_url, redis_url)).get().json()
    assert answer["source"] == "cloudflare"
    assert relay_candidates(answer["iceServers"]) == 0
    assert relay_chat(answer["iceServers"], timeout=5) is None


def test_served_credential_is_accepted_while_ttl_lasts_and_refused_after(start_host, coturn, redis_url):
    env = app_env(None, redis_url, TURN_SHARED_SECRET=TURN_SECRET, TURN_URLS=coturn.turn_url, TURN_CREDENTIAL_TTL="6", ICE_CACHE_TTL="3")
    answer = start_host(env).get().json()
    expires_at = datetime.datetime.strptime(answer["expiresAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
    assert 1 <= answer["ttl"] <= 6
    assert relay_candidates(answer["iceServers"]) >= 1

    time.sleep(max(0.0, expires_at - time.time() - 1.5))  # late in its life: ttl still > 0
    assert relay_candidates(answer["iceServers"]) >= 1

    time.sleep(max(0.0, expires_at - time.time() + 1.5))  # past its expiry
    assert relay_candidates(answer["iceServers"]) == 0
