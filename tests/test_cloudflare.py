"""The Cloudflare client against mocked HTTP (responses): requests, validation, errors."""

import json

import pytest
import requests
import responses

from app.core.errors import UpstreamInvalid, UpstreamRejected, UpstreamUnavailable
from app.providers.cloudflare import CloudflareClient, retry_after

BASE = "https://cloudflare.example.test/v1"
URL = f"{BASE}/turn/keys/test-key-id/credentials/generate-ice-servers"
TOKEN = "test-api-token-not-a-secret"
ANSWER = {
    "iceServers": [
        {"urls": ["stun:stun.cloudflare.com:3478", "stun:stun.cloudflare.com:53"]},
        {
            "urls": [
                "turn:turn.cloudflare.com:3478?transport=udp",
                "turn:turn.cloudflare.com:53?transport=udp",
                "turns:turn.cloudflare.com:5349?transport=tcp",
            ],
            "username": "test-user",
            "credential": "test-password",
        },
    ]
}


@pytest.fixture
def client():
    return CloudflareClient("test-key-id", TOKEN, BASE)


def envelope(message):
    return {"success": False, "errors": [{"code": 10000, "message": message}], "messages": [], "result": None}


@responses.activate
def test_issue_posts_ttl_with_bearer_token_and_filters_port_53(client):
    responses.post(URL, json=ANSWER, status=201)
    servers = client.issue(86400)
    sent = responses.calls[0].request
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(sent.body) == {"ttl": 86400}
    assert servers == [
        {"urls": ["stun:stun.cloudflare.com:3478"]},
        {
            "urls": ["turn:turn.cloudflare.com:3478?transport=udp", "turns:turn.cloudflare.com:5349?transport=tcp"],
            "username": "test-user",
            "credential": "test-password",
        },
    ]


@responses.activate
@pytest.mark.parametrize(
    ("status", "message"), [(401, "Authentication error"), (500, "Internal server error"), (404, "TURN key not found")]
)
def test_error_envelope_becomes_one_line_with_status_and_message(client, status, message):
    responses.post(URL, json=envelope(message), status=status)
    with pytest.raises(UpstreamRejected) as excinfo:
        client.issue(86400)
    assert str(excinfo.value) == f"Cloudflare answered {status}: {message}"
    assert excinfo.value.status == status


@responses.activate
def test_rate_limit_carries_retry_after(client):
    responses.post(URL, json=envelope("Too many requests"), status=429, headers={"Retry-After": "42"})
    with pytest.raises(UpstreamRejected) as excinfo:
        client.issue(86400)
    assert excinfo.value.retry_after == 42


def test_retry_after_accepts_an_http_date():
    assert retry_after("Wed, 21 Oct 2026 07:28:30 GMT", now=1792567700.0) == pytest.approx(10, abs=1)
    assert retry_after("soon") is None and retry_after(None) is None


@responses.activate
@pytest.mark.parametrize(
    "answer",
    [
        {"body": "<html>Bad gateway</html>", "content_type": "text/html"},
        {"json": {"iceServers": [{"urls": ["turn:turn.cloudflare.com:3478"], "username": "u"}]}},
        {"json": {"iceServers": [{"urls": ["stun:stun.cloudflare.com:3478"]}]}},
        {"json": {"result": {}}},
        {"json": ["not", "an", "object"]},
    ],
)
def test_success_status_without_usable_servers_is_an_upstream_error(client, answer):
    responses.post(URL, status=201, **answer)
    with pytest.raises(UpstreamInvalid):
        client.issue(86400)


@responses.activate
def test_timeout_is_unavailable(client):
    responses.post(URL, body=requests.ReadTimeout("read timed out"))
    with pytest.raises(UpstreamUnavailable, match="did not answer within"):
        client.issue(86400)


@responses.activate
def test_connection_error_is_unavailable_without_the_url(client):
    responses.post(URL, body=requests.ConnectionError(f"Max retries exceeded with url: {URL}"))
    with pytest.raises(UpstreamUnavailable) as excinfo:
        client.issue(86400)
    assert "test-key-id" not in str(excinfo.value)


@responses.activate
def test_token_appears_in_no_error(client):
    responses.post(URL, json=envelope("Unauthorized"), status=403)
    with pytest.raises(UpstreamRejected) as excinfo:
        client.issue(86400)
    assert TOKEN not in str(excinfo.value) and TOKEN not in repr(client)


@pytest.mark.parametrize("value", ["\u00b2", "\u0663\u0660", "1e3", "-5"])
def test_a_retry_after_that_is_neither_digits_nor_a_date_is_ignored(value):
    assert retry_after(value) is None


@responses.activate
def test_an_answer_that_is_not_json_is_described_in_our_words_not_the_decoders(client):
    responses.post(URL, body='{"iceServers": [ "fake-secret-looking-fragment', status=201, content_type="application/json")
    with pytest.raises(UpstreamInvalid) as failure:
        client.issue(3600)
    assert str(failure.value) == "Cloudflare answered 201 without usable ICE servers: the answer is not a JSON object"
