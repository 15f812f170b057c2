"""Fixtures: the app through the real factory, a fake clock, the Cloudflare stand-in, a real Redis."""

from __future__ import annotations

import pytest

from app import create_app
from app.config import Settings
from app.core.errors import UpstreamRejected
from app.core.service import IceService
from app.store.memory import MemoryStore
from app.web.metrics import PrometheusRecorder
from tests.cloudflare_stub import CloudflareStub
from tests.redis_topologies import RedisClusterGroup, SentinelGroup, TlsRedis
from tests.servers import TURN_SECRET, Coturn, Gunicorn, RedisServer

T0 = 1_800_000_000.0  # a fixed "now" for the fake clock (2027-01-15)
RECORDER = PrometheusRecorder()  # the metrics are the process's: tests read /metrics through the real recorder


class FakeClock:
    """A clock the test moves by hand; ``sleep`` advances it instead of waiting."""

    def __init__(self, now: float = T0):
        """Start at ``now``."""
        self.now = now

    def __call__(self) -> float:
        """Return the current fake time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds

    sleep = advance


class LocalProvider:
    """A provider minting locally, like the TURN shared secret, counting calls."""

    source = "turn-secret"
    label = "TURN shared secret"
    remote = False

    def __init__(self):
        """Start at zero calls."""
        self.calls = 0

    def mint(self, expires_at: int, user: str | None = None) -> list[dict]:
        """Mint a credential expiring at ``expires_at``."""
        self.calls += 1
        return [{"urls": ["turn:own.example.test:3478"], "username": f"{expires_at}:local-{self.calls}", "credential": "local-password"}]


class FakeProvider:
    """A provider that counts calls and fails on demand."""

    source = "cloudflare"
    label = "Cloudflare"
    remote = True

    def __init__(self):
        """Start healthy."""
        self.calls = 0
        self.users: list[str | None] = []  # the user each call was for
        self.failure: Exception | None = None

    def issue(self, ttl: int, user: str | None = None, timeout: tuple[float, float] | None = None) -> list[dict]:
        """Return a new credential, or raise the failure set."""
        self.calls += 1
        self.users.append(user)
        if self.failure is not None:
            raise self.failure
        return [
            {"urls": ["stun:stun.example.test:3478"]},
            {
                "urls": ["turn:turn.example.test:3478?transport=udp"],
                "username": f"user-{self.calls}",
                "credential": f"password-{self.calls}",
            },
        ]

    def fail(self, status: int = 500, retry_after: float | None = None) -> None:
        """Make every later call fail like Cloudflare answering ``status``."""
        self.failure = UpstreamRejected(f"Cloudflare answered {status}: Internal server error", status=status, retry_after=retry_after)


@pytest.fixture(autouse=True)
def no_dotenv(monkeypatch):
    """Keep a developer's own .env out of every test; tests that want one point ICE_ENV_FILE at it."""
    monkeypatch.setenv("ICE_ENV_FILE", "")


@pytest.fixture
def clock():
    """Return a fake clock."""
    return FakeClock()


@pytest.fixture
def provider():
    """Return a counting fake provider."""
    return FakeProvider()


@pytest.fixture
def make_service(clock, provider):
    """Build an IceService on an in-process store with the fake clock; background work runs inline."""

    def make(store=None, providers=None, **kwargs) -> IceService:
        kwargs.setdefault("credential_ttl", 24)
        kwargs.setdefault("cache_ttl", 12)
        kwargs.setdefault("stun_urls", ("stun:stun.example.test:3478",))
        kwargs.setdefault("recorder", RECORDER)
        return IceService(
            store if store is not None else MemoryStore(clock),
            [provider] if providers is None else providers,
            clock=clock,
            sleep=clock.sleep,
            jitter=lambda: 1.0,
            spawn=lambda target: target(),
            **kwargs,
        )

    return make


@pytest.fixture
def app(make_service):
    """Build the app through the real factory around a test service."""
    return create_app(Settings(cors_origins=("https://app.example.test",)), service=make_service())


@pytest.fixture
def client(app):
    """Return a test client."""
    return app.test_client()


@pytest.fixture
def cloudflare():
    """Run the Cloudflare stand-in on loopback for one test."""
    with CloudflareStub() as stub:
        yield stub


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """Run one real redis-server for the session."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_redis(tmp_path_factory):
    """Run one TLS-only redis-server with an ACL user (default user off) for the session."""
    server = TlsRedis(tmp_path_factory.mktemp("tls-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sentinel_group(tmp_path_factory):
    """Run a primary, a replica and three sentinels for the session (tests that fail over start their own)."""
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel")).start()
    yield group
    group.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """Run a three-primary Redis Cluster for the session."""
    cluster = RedisClusterGroup(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_url(redis_server):
    """Return the URL of the real Redis, emptied for this test (restarted if a test killed it)."""
    if redis_server.process.poll() is not None:
        redis_server.start()
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def start_host(tmp_path):
    """Start gunicorn hosts (4 workers unless told) with a given environment; stop them all afterwards."""
    hosts = []

    def start(env, name="host", args="", workers=4):
        host = Gunicorn(env, workers=workers, log_path=tmp_path / f"{name}.log", args=args)
        hosts.append(host)
        return host.start()

    yield start
    for host in hosts:
        host.stop()


@pytest.fixture
def coturn(tmp_path):
    """Run coturn on loopback with the tests' shared secret."""
    server = Coturn(tmp_path, TURN_SECRET).start()
    yield server
    server.stop()


# -- markers -------------------------------------------------------------------------------------
# Every test is one kind: unit (in process, fakes and stand-ins only: make test-fast runs these in seconds),
# integration (a real redis-server, gunicorn, coturn or another process), browser (Chromium, Firefox, Node),
# deploy (deploy.sh, pm2, systemd, nginx). A module or test says browser or deploy itself; integration is
# what uses a real-process fixture or says so; the rest is unit.
KINDS = ("unit", "integration", "browser", "deploy")
REAL_FIXTURES = {"redis_server", "redis_url", "tls_redis", "sentinel_group", "redis_cluster", "start_host", "coturn", "own_redis"}


def pytest_collection_modifyitems(items):
    """Give every test its kind; a test marked with two kinds is a mistake."""
    for item in items:
        kinds = [kind for kind in KINDS if item.get_closest_marker(kind) is not None]
        if len(kinds) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(kinds)}: one kind per test")
        if not kinds:
            item.add_marker("integration" if REAL_FIXTURES & set(item.fixturenames) else "unit")


@pytest.fixture
def twilio():
    """Run the Twilio stand-in."""
    from tests.vendor_stubs import TwilioStub

    with TwilioStub() as stub:
        yield stub


@pytest.fixture
def metered():
    """Run the Metered stand-in."""
    from tests.vendor_stubs import MeteredStub

    with MeteredStub() as stub:
        yield stub
