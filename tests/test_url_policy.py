"""The URL policy: at most ICE_MAX_URLS URLs, one per served transport, the ports that pass firewalls."""

import pytest

from app import create_app
from app.config import ConfigError, Settings, load_settings
from app.config.ice_servers import parse_ice_servers
from app.core.urls import UrlPolicy, classify
from tests.cloudflare_stub import STUN_URLS, TURN_URLS

# What Cloudflare answers (eight URLs, port 53 included), as the stand-in does.
CLOUDFLARE = [{"urls": STUN_URLS}, {"urls": TURN_URLS, "username": "cf-user", "credential": "cf-password"}]


def urls(servers):
    return [url for server in servers for url in server["urls"]]


def test_cloudflares_answer_becomes_one_url_per_transport_and_one_stun_url():
    served = UrlPolicy().apply(parse_ice_servers(CLOUDFLARE))
    assert urls(served) == [
        "stun:stun.cloudflare.com:3478",
        "turn:turn.cloudflare.com:3478?transport=udp",
        "turn:turn.cloudflare.com:80?transport=tcp",
        "turns:turn.cloudflare.com:443?transport=tcp",
    ]
    assert served[1]["username"] == "cf-user" and served[1]["credential"] == "cf-password"  # the shape is unchanged


def test_the_choice_goes_by_scheme_transport_and_port_never_by_host():
    own = [{**server, "urls": [url.replace("cloudflare.com", "example.org") for url in server["urls"]]} for server in CLOUDFLARE]
    chosen = urls(UrlPolicy().apply(parse_ice_servers(own)))
    assert [url.replace("example.org", "cloudflare.com") for url in chosen] == urls(UrlPolicy().apply(parse_ice_servers(CLOUDFLARE)))


def test_a_short_list_under_the_cap_is_served_as_it_is():
    short = [
        {"urls": ["stun:own.example.org:3478"]},
        {
            "urls": ["turn:own.example.org:3478?transport=udp", "turn:own.example.org:3478?transport=tcp"],
            "username": "u",
            "credential": "c",
        },
    ]
    assert UrlPolicy().apply(short) == tuple(short)


STUN = "stun:stun.cloudflare.com:3478"
UDP = "turn:turn.cloudflare.com:3478?transport=udp"
TCP_80 = "turn:turn.cloudflare.com:80?transport=tcp"
TLS_443 = "turns:turn.cloudflare.com:443?transport=tcp"
TLS_5349 = "turns:turn.cloudflare.com:5349?transport=tcp"


@pytest.mark.parametrize(
    ("transports", "max_urls", "expected"),
    [
        (("tls",), 4, [STUN, TLS_5349, TLS_443]),  # under the cap once udp and tcp are dropped
        (("udp", "tcp", "tls"), 3, [UDP, TCP_80, TLS_443]),
        (("udp", "tcp", "tls"), 2, [UDP, TLS_443]),
        (("udp", "tcp", "tls"), 1, [UDP]),
        (("tcp",), 2, [TCP_80, STUN]),
    ],
)
def test_transports_and_cap(transports, max_urls, expected):
    assert sorted(urls(UrlPolicy(transports, max_urls).apply(parse_ice_servers(CLOUDFLARE)))) == sorted(expected)


def test_urls_are_classified_by_scheme_transport_and_port():
    assert classify("turn:[2001:db8::1]:443?transport=tcp") == ("tcp", 443)
    assert classify("turn:relay.example.org") == ("udp", 3478)
    assert classify("TURNS:relay.example.org:443?transport=tcp") == ("tls", 443)
    assert classify("stun:relay.example.org:19302") == ("stun", 19302)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ICE_TURN_TRANSPORTS": "udp,quic"}, "ICE_TURN_TRANSPORTS must list some of udp, tcp, tls"),
        ({"ICE_TURN_TRANSPORTS": " , "}, "ICE_TURN_TRANSPORTS must list some of udp, tcp, tls"),
        ({"ICE_MAX_URLS": "0"}, "ICE_MAX_URLS must be between 1 and 32"),
        ({"ICE_MAX_URLS": "four"}, "ICE_MAX_URLS must be a whole number"),
    ],
)
def test_invalid_policy_settings_stop_the_start_naming_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_every_answer_of_the_service_follows_the_policy(make_service, provider):
    provider.issue = lambda ttl, user=None, timeout=None: parse_ice_servers(CLOUDFLARE)
    client = create_app(Settings(), service=make_service()).test_client()
    assert urls(client.get("/api/ice-servers").get_json()["iceServers"]) == [STUN, UDP, TCP_80, TLS_443]
    legacy = client.post("/api/turn-credentials").get_json()["iceServers"]
    assert sorted(legacy["urls"]) == sorted([STUN, UDP, TCP_80, TLS_443]) and legacy["username"] == "cf-user"


def test_the_static_fallback_follows_the_policy_too(make_service):
    static = [{**CLOUDFLARE[1], "urls": [url.replace("cloudflare.com", "static.example.org") for url in CLOUDFLARE[1]["urls"]]}]
    answer = make_service(turn_servers=parse_ice_servers(static), providers=[]).answer()
    assert answer.source == "static"
    # One per transport, then (no STUN URL here) the next in the provider's order: four in all.
    tcp_3478 = "turn:turn.cloudflare.com:3478?transport=tcp"
    assert urls(answer.ice_servers) == [url.replace("cloudflare.com", "static.example.org") for url in (UDP, tcp_3478, TCP_80, TLS_443)]


@pytest.mark.parametrize("url", ["turn:h.example.test:\u00b2", "turn:[::1]:\u00b3?transport=tcp", "turns:h.example.test:\u0664\u0663"])
def test_a_port_that_is_not_ascii_digits_is_read_as_the_default_port(url):
    kind, port = classify(url)
    assert port == (5349 if url.startswith("turns:") else 3478)
