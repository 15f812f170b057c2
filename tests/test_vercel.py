"""Vercel for real: `vercel build` (the pinned CLI, offline, no account) on a clean copy, and its function run as Vercel runs it.

The instances run Python 3.12 from the build's own output, with only the packages it bundled,
against a real Redis and the Cloudflare stand-in.
"""

from __future__ import annotations

import json

import pytest

from tests import serverless_fleet
from tests.cloudflare_stub import API_TOKEN
from tests.servers import app_env
from tests.vercel_runtime import VercelFunction, remove_build, vercel_build

pytestmark = pytest.mark.xdist_group("vercel")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build a clean copy of the tree once, with bytecode as docs/serverless.md sets it up; yield the deployable function."""
    workdir = tmp_path_factory.mktemp("vercel")
    function_dir, done = vercel_build(workdir / "copy", bytecode=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield function_dir
    remove_build(workdir)


@pytest.fixture
def start_instance(built, tmp_path):
    """Start instances of the built function; stop them afterwards."""
    instances = []

    def start(env, name="instance"):
        instance = VercelFunction(built, env, tmp_path, f"{name}-{len(instances)}")
        instances.append(instance)
        return instance.start()

    yield start
    for instance in instances:
        instance.stop()


def test_vercel_build_bundles_the_pinned_dependencies_for_python_312_with_bytecode(built):
    """The Flask preset finds wsgi:app; the function runs 3.12 with every pin of requirements.txt, and ships .pyc files."""
    config = json.loads((built / ".vc-config.json").read_text())
    assert config["runtime"] == "python3.12"
    vendored = {path.name.split("-")[0].lower() for path in (built / "_vendor").glob("*.dist-info")}
    assert {"flask", "gunicorn", "redis", "requests", "pyjwt", "prometheus_client", "apig_wsgi"} <= vendored
    assert (built / "app" / "web" / "__pycache__" / "views.cpython-312.pyc").is_file()  # the app's own modules too
    assert (built / "_vendor" / "flask" / "__pycache__" / "app.cpython-312.pyc").is_file()


def test_two_cold_instances_serve_both_routes_from_one_credential_in_redis(redis_url, cloudflare, start_instance):
    """GET /api/ice-servers and POST /api/turn-credentials, TURN from the shared Redis: one upstream call for both instances."""
    env = app_env(cloudflare.base_url, redis_url, ICE_LOG_LEVEL="INFO")
    first, second = start_instance(env), start_instance(env)
    get = first.request("GET", "/api/ice-servers", "203.0.113.50")
    post = second.request("POST", "/api/turn-credentials", "203.0.113.51", json={})
    assert get.status_code == 200 and post.status_code == 200
    assert get.headers["Cache-Control"] == "no-store"
    username = post.json()["iceServers"]["username"]  # the seed users' single-object body, their frontend unchanged
    assert username == next(server["username"] for server in get.json()["iceServers"] if "username" in server)
    assert cloudflare.call_count == 1


def test_a_fleet_frozen_across_the_refresh_point_calls_the_upstream_once_per_window_and_never_serves_an_expired_credential(
    redis_url, cloudflare, start_instance
):
    """Three cold instances, frozen and thawed past the refresh point, an outage and a recovery (tests/serverless_fleet.py)."""
    env = app_env(cloudflare.base_url, redis_url, **serverless_fleet.FLEET_SETTINGS)
    serverless_fleet.run(lambda name: _Asked(start_instance(env, name)), cloudflare)


class _Asked:
    """An instance of the built function, asked as Vercel's edge asks it."""

    def __init__(self, instance: VercelFunction):
        """Wrap ``instance``."""
        self.instance = instance

    def ask(self, address: str) -> tuple[int, dict]:
        """GET /api/ice-servers from ``address``; return the status and the body."""
        answer = self.instance.request("GET", "/api/ice-servers", address)
        return answer.status_code, answer.json()

    def freeze(self) -> None:
        """Freeze it."""
        self.instance.freeze()

    def thaw(self) -> None:
        """Thaw it."""
        self.instance.thaw()


def test_the_rate_limit_counts_the_address_vercel_forwards_in_redis_across_instances(redis_url, cloudflare, start_instance):
    """Vercel sets X-Forwarded-For itself: that address is counted, fleet-wide."""
    env = app_env(cloudflare.base_url, redis_url, ICE_RATE_LIMIT="3/minute")
    instances = [start_instance(env), start_instance(env)]
    statuses = [instances[n % 2].request("GET", "/api/ice-servers", "203.0.113.60").status_code for n in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = instances[0].request("GET", "/api/ice-servers", "203.0.113.60")
    assert refused.json()["status"] == 429 and refused.headers["Retry-After"]
    assert instances[1].request("GET", "/api/ice-servers", "203.0.113.61").status_code == 200


def test_a_bad_setting_is_reported_to_vercels_runtime_naming_it(built, tmp_path):
    """The instance reports an unrecoverable error naming the variable, and never the token."""
    env = {"ICE_CACHE_TTL": "soon", "CLOUDFLARE_TURN_TOKEN_ID": "fake-key", "CLOUDFLARE_API_TOKEN": API_TOKEN}
    instance = VercelFunction(built, env, tmp_path)
    try:
        with pytest.raises(RuntimeError, match="did not start"):
            instance.start()
        instance.process.wait(10)
        errors = [message["payload"]["message"] for message in instance.messages if message["type"] == "unrecoverable-error"]
        assert errors and "ICE_CACHE_TTL" in errors[0]
        assert API_TOKEN not in json.dumps(instance.messages) + instance.log_path.read_text()
    finally:
        instance.stop()
