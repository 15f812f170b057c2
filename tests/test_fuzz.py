"""A fuzz pass over the HTTP surface (Hypothesis): whatever arrives, never a 5xx, never a traceback."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from app.config import Settings
from app.service import IceService
from app.store import MemoryStore
from tests.conftest import FakeProvider

PATHS = ["/api/ice-servers", "/api/turn-credentials", "/healthz", "/readyz", "/metrics", "/demo", "/static/ice-servers.js", "/"]
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

methods = st.one_of(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"]),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=12),
)
# Raw WSGI paths: latin-1 text holding any bytes, as gunicorn hands them over.
paths = st.one_of(
    st.sampled_from(PATHS),
    st.builds(lambda base, raw: base + raw.decode("latin-1"), st.sampled_from(PATHS), st.binary(max_size=40)),
    st.text(max_size=60).map(lambda text: "/" + text.encode("utf-8").decode("latin-1")),
)
queries = st.binary(max_size=3000).map(lambda raw: raw.decode("latin-1"))
headers = st.dictionaries(
    st.text(TOKEN_CHARS, min_size=1, max_size=20),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200),
    max_size=6,
)
bodies = st.one_of(st.just(b""), st.binary(max_size=2000), st.binary(min_size=65 * 1024, max_size=66 * 1024))


def build_client(access_mode: str):
    """Build the app through the real factory; a provider that always works."""
    service = IceService(MemoryStore(), [FakeProvider()], credential_ttl=86400, cache_ttl=82800)
    config = Settings(
        access_mode=access_mode,
        access_secret="test-access-secret-long-enough",
        cors_origins=("https://app.example.test",),
        demo=True,
        rate_limit="1000000 per minute",
    )
    return create_app(config, service=service).test_client()


CLIENTS = {mode: build_client(mode) for mode in ("open", "origin", "token")}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mode=st.sampled_from(sorted(CLIENTS)), method=methods, path=paths, query=queries, extra=headers, body=bodies)
def test_no_input_gets_a_5xx_or_a_traceback(mode, method, path, query, extra, body):
    environ = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": method}
    response = CLIENTS[mode].open("/", method=method, headers=extra, data=body, environ_overrides=environ)
    assert response.status_code < 500, (method, path, response.status_code)
    payload = response.get_data()
    assert b"Traceback" not in payload
    if response.status_code >= 400 and method != "HEAD":
        error = json.loads(payload)
        assert error["status"] == response.status_code and error["error"]
