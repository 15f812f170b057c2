"""A fuzz pass over the HTTP surface (Hypothesis): whatever arrives, never a 5xx, never a traceback.

Every access mode, the default one included (its credential answer runs below Flask), with header
values of any latin-1 byte, as gunicorn hands them over: "²" (0xB2) passes str.isdigit().
"""

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from app.config import Settings
from app.core.service import IceService
from app.store.memory import MemoryStore
from tests.conftest import FakeProvider
from tests.jwt_tools import HS_SECRET

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
# Header values hold any byte but controls, decoded as latin-1 (WSGI's native strings).
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=255, blacklist_characters="\x7f"), max_size=200)
digits_and_lookalikes = st.text("0123456789.\u00b2\u00b3\u00b9\u00bc\u00bd ", min_size=1, max_size=14)
authorization = st.one_of(
    header_values,
    st.builds(lambda value: "Bearer " + value, header_values),
    st.builds(lambda expiry, sig: f"Bearer {expiry}.{sig}", digits_and_lookalikes, st.text("0123456789abcdef\u00b2", max_size=64)),
)
parsed_headers = st.fixed_dictionaries(
    {},
    optional={
        "Authorization": authorization,
        "X-Forwarded-For": st.one_of(header_values, st.lists(header_values, max_size=3).map(", ".join)),
        "Origin": header_values,
        "Referer": header_values,
        "Content-Type": header_values,
    },
)
other_headers = st.dictionaries(st.text(TOKEN_CHARS, min_size=1, max_size=20), header_values, max_size=3)
headers = st.builds(lambda parsed, other: {**other, **parsed}, parsed_headers, other_headers)
content_lengths = st.one_of(st.none(), digits_and_lookalikes, header_values)
bodies = st.one_of(st.just(b""), st.binary(max_size=2000), st.binary(min_size=65 * 1024, max_size=66 * 1024))


def build_client(access_mode: str, cors: bool = True):
    """Build the app through the real factory; a provider that always works."""
    service = IceService(MemoryStore(), [FakeProvider()], credential_ttl=86400, cache_ttl=82800)
    config = Settings(
        access_mode=access_mode,
        access_secret="test-access-secret-long-enough",
        jwt_secret=HS_SECRET if access_mode == "jwt" else None,
        jwt_algorithms=("HS256",),
        cors_origins=("https://app.example.test",) if cors else (),
        demo=True,
        rate_limit="1000000 per minute",
    )
    return create_app(config, service=service).test_client()


CLIENTS = {
    "default": build_client("open", cors=False),  # production's default: the answer below Flask
    "open+cors": build_client("open"),
    "origin": build_client("origin"),
    "token": build_client("token", cors=False),
    "token+cors": build_client("token"),
    "jwt": build_client("jwt", cors=False),
}


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "1200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mode=st.sampled_from(sorted(CLIENTS)), method=methods, path=paths, query=queries, extra=headers, body=bodies, length=content_lengths)
def test_no_input_gets_a_5xx_or_a_traceback(mode, method, path, query, extra, body, length):
    environ = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": method}
    if length is not None:
        environ["CONTENT_LENGTH"] = length
    response = CLIENTS[mode].open("/", method=method, headers=extra, data=body, environ_overrides=environ)
    assert response.status_code < 500, (method, path, response.status_code)
    payload = response.get_data()
    assert b"Traceback" not in payload
    if response.status_code >= 400 and method != "HEAD":
        error = json.loads(payload)
        assert error["status"] == response.status_code and error["error"]
