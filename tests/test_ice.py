"""Pure logic: port-53 filtering, validation, the cache entry, and the response bodies."""

import pytest

from app.config.ice_servers import is_blocked_url, parse_ice_servers
from app.core.ice import Credential, answer_body, legacy_body, new_credential

T0 = 1_800_000_000.0


@pytest.mark.parametrize(
    "url",
    ["stun:stun.cloudflare.com:53", "turn:turn.cloudflare.com:53?transport=udp", "turns:[2001:db8::1]:53?transport=tcp"],
)
def test_port_53_is_blocked(url):
    assert is_blocked_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "turns:turn.cloudflare.com:5349?transport=tcp",
        "turn:turn.cloudflare.com:530",
        "stun:stun53.example.test:3478",
        "turn:turn.example.test?transport=udp",
        "turn:[2001:db8::53]:3478",
    ],
)
def test_other_ports_are_kept(url):
    assert not is_blocked_url(url)


def test_parse_drops_port_53_and_keeps_the_rest():
    servers = parse_ice_servers(
        [
            {"urls": ["stun:s.example.test:3478", "stun:s.example.test:53"]},
            {"urls": ["turn:t.example.test:53?transport=udp", "turns:t.example.test:5349"], "username": "u", "credential": "c"},
        ]
    )
    assert servers == [
        {"urls": ["stun:s.example.test:3478"]},
        {"urls": ["turns:t.example.test:5349"], "username": "u", "credential": "c"},
    ]


def test_parse_accepts_the_older_single_object_form():
    servers = parse_ice_servers({"urls": "turn:t.example.test:3478", "username": "u", "credential": "c"})
    assert servers == [{"urls": ["turn:t.example.test:3478"], "username": "u", "credential": "c"}]


def test_parse_drops_entries_left_empty_and_extra_fields():
    servers = parse_ice_servers(
        [{"urls": "stun:s.example.test:53"}, {"urls": "turn:t.example.test", "username": "u", "credential": "c", "extra": 1}]
    )
    assert servers == [{"urls": ["turn:t.example.test"], "username": "u", "credential": "c"}]


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        "turn:t.example.test",
        [{"urls": []}],
        [{"urls": [5]}],
        [{"username": "u", "credential": "c"}],
        [{"urls": "https://example.test", "username": "u", "credential": "c"}],
        [{"urls": "stun:s.example.test"}],
        [{"urls": "turn:t.example.test", "username": "u"}],
        [{"urls": "turn:t.example.test:53", "username": "u", "credential": "c"}],
    ],
)
def test_parse_refuses_answers_without_a_usable_turn_credential(payload):
    with pytest.raises(ValueError):
        parse_ice_servers(payload)


def test_credential_round_trips_through_the_cache_entry():
    credential = new_credential([{"urls": ["turn:t.example.test"], "username": "u", "credential": "c"}], "cloudflare", T0, 24, 12)
    assert Credential.from_json(credential.to_json()) == credential
    assert (credential.refresh_at, credential.expires_at, credential.username) == (T0 + 12, T0 + 24, "u")


@pytest.mark.parametrize(
    "raw",
    [
        b"junk",
        b"{}",
        b"[]",
        b'{"iceServers": [], "source": "x"}',
        b'{"source":"cloudflare","iceServers":[{"urls":["turn:t"]}],"issuedAt":"x","refreshAt":1,"expiresAt":2}',
    ],
)
def test_corrupt_cache_entry_is_a_miss(raw):
    assert Credential.from_json(raw) is None


def test_freshness_and_validity_follow_the_windows():
    credential = new_credential([{"urls": ["turn:t.example.test"], "username": "u", "credential": "c"}], "cloudflare", T0, 24, 12)
    assert credential.is_fresh(T0 + 11.9) and not credential.is_fresh(T0 + 12)
    assert credential.is_valid(T0 + 23) and not credential.is_valid(T0 + 23.5)


def test_answer_body_counts_ttl_from_now_and_formats_expiry():
    body = answer_body([{"urls": ["stun:s.example.test"]}], "cloudflare", T0 + 86400, T0 + 0.5)
    assert body == {
        "iceServers": [{"urls": ["stun:s.example.test"]}],
        "ttl": 86399,
        "expiresAt": "2027-01-16T08:00:00Z",
        "source": "cloudflare",
    }


def test_legacy_body_merges_urls_under_the_one_credential():
    body = legacy_body(
        [
            {"urls": ["stun:s.example.test:3478"]},
            {"urls": ["turn:t.example.test:3478", "turns:t.example.test:5349"], "username": "u", "credential": "c"},
        ]
    )
    assert body == {
        "iceServers": {
            "urls": ["stun:s.example.test:3478", "turn:t.example.test:3478", "turns:t.example.test:5349"],
            "username": "u",
            "credential": "c",
        }
    }


def test_legacy_body_without_credential_is_urls_only():
    assert legacy_body([{"urls": ["stun:a.example.test"]}, {"urls": ["stun:b.example.test"]}]) == {
        "iceServers": {"urls": ["stun:a.example.test", "stun:b.example.test"]}
    }
