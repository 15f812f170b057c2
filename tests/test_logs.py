"""ICE_LOG_FORMAT=json: one JSON object per line, on stdout, with the request's id; the id in X-Request-ID on every answer."""

import json
import logging

import pytest

from app import create_app
from app.config import ConfigError, Settings, load_settings
from app.web import logs


@pytest.fixture
def json_log(capsys):
    """Read the app's JSON lines: its handler is made anew, on the stdout that pytest captures in the test."""
    logger = logging.getLogger("ice_servers")
    kept = logger.handlers[:]
    logger.handlers = []
    yield lambda: capsys.readouterr().out
    logger.handlers = kept


def test_json_lines_carry_the_request_id_of_the_request_that_logged_them(make_service, provider, json_log):
    app = create_app(Settings(log_format="json"), service=make_service())
    provider.fail(500)  # the request logs the failure
    response = app.test_client().get("/api/ice-servers", headers={"X-Request-ID": "req-42"}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert response.headers["X-Request-ID"] == "req-42"
    entries = [json.loads(line) for line in json_log().splitlines()]  # every line one object
    during = [entry for entry in entries if entry.get("request_id") == "req-42"]
    assert any(entry["message"].startswith("Failed to fetch TURN credentials") for entry in during)
    assert all(entry["logger"] == "ice_servers" for entry in during)
    assert all(entry["time"].endswith("Z") and isinstance(entry["pid"], int) for entry in entries)
    assert [entry for entry in entries if "request_id" in entry and entry["request_id"] != "req-42"] == []


def test_a_message_with_newlines_and_non_ascii_stays_one_line():
    record = logging.LogRecord("ice_servers", logging.WARNING, __file__, 1, "line one\nline two \u00b2 \u2603", None, None)
    text = logs.JsonLines().format(record)
    assert "\n" not in text and json.loads(text)["message"] == "line one\nline two \u00b2 \u2603"


@pytest.mark.parametrize(
    ("peer", "given", "kept"),
    [
        ("127.0.0.1", "req-42", True),  # the nginx on the box, or a trusted proxy
        ("203.0.113.9", "req-42", False),  # a stranger does not name log lines
        ("127.0.0.1", "r\u00e9q", False),  # not an ASCII token
        ("127.0.0.1", "x" * 129, False),  # oversized
        ("127.0.0.1", "a b", False),
        ("127.0.0.1", "", False),
    ],
)
def test_an_x_request_id_is_taken_only_from_a_trusted_proxy_and_only_when_sane(make_service, peer, given, kept):
    client = create_app(Settings(), service=make_service()).test_client()
    headers = {"X-Request-ID": given} if given else {}
    answered = client.get("/healthz", headers=headers, environ_base={"REMOTE_ADDR": peer}).headers["X-Request-ID"]
    if kept:
        assert answered == given
    else:
        assert answered != given and logs.SANE_ID.fullmatch(answered)
        second = client.get("/healthz", environ_base={"REMOTE_ADDR": peer}).headers["X-Request-ID"]
        assert second != answered  # a new one each request


def test_every_answer_carries_an_id_errors_included(make_service):
    client = create_app(Settings(), service=make_service()).test_client()
    for path, status in (("/api/ice-servers", 200), ("/nowhere", 404), ("/api/ice-servers?" + "q" * 3000, 414)):
        response = client.get(path)
        assert response.status_code == status and logs.SANE_ID.fullmatch(response.headers["X-Request-ID"])


def test_a_log_format_that_is_not_one_is_refused_with_one_line():
    with pytest.raises(ConfigError, match=r"^ICE_LOG_FORMAT must be one of text, json, got 'yaml'$"):
        load_settings({"ICE_LOG_FORMAT": "yaml"})
    assert load_settings({"ICE_LOG_FORMAT": "JSON"}).log_format == "json"
