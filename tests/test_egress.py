"""The monthly egress ceiling: the guard on a fake clock, the analytics client against the GraphQL stand-in."""

import logging
import re
import time

import fakeredis
import pytest

from app import create_app
from app.config import ConfigError, Settings, load_settings
from app.core.store_policy import StorePolicy
from app.spend.analytics import AnalyticsClient, UsageUnavailable, month_start
from app.spend.ceiling import FRESH_INTERVALS, EgressGuard
from app.store.memory import MemoryStore
from app.store.redis import RedisStore
from tests.conftest import RECORDER, LocalProvider
from tests.graphql_stub import ACCOUNT_ID, ANALYTICS_TOKEN, GraphqlStub

LIMIT = 1_000_000_000  # 1 GB
INTERVAL = 2
STATIC = ({"urls": ["turn:static.example.test:3478"], "username": "static-user", "credential": "static-password"},)


class FakeAnalytics:
    """Month-to-date egress as the test sets it; counts queries; fails on demand."""

    def __init__(self):
        self.egress = 0
        self.failure = None
        self.queries = []

    def egress_bytes(self, now):
        self.queries.append(now)
        if self.failure:
            raise UsageUnavailable(self.failure)
        return self.egress


@pytest.fixture
def analytics():
    return FakeAnalytics()


@pytest.fixture
def guarded(make_service, clock, provider, analytics):
    """Build a service with the ceiling; background work runs inline."""

    def build(store=None, providers=None, unknown_closed=False, **kwargs):
        store = store if store is not None else MemoryStore(clock)
        policy = StorePolicy(store, clock)
        guard = EgressGuard(
            analytics, policy, LIMIT, INTERVAL, unknown_closed, clock=clock, spawn=lambda target: target(), recorder=RECORDER
        )
        return make_service(store=store, providers=providers, policy=policy, egress=guard, **kwargs)

    return build


def primed(service, clock):
    """Take the first reading (asked in the background by the first check) and let the next check see it."""
    service.egress.over()
    clock.advance(1.01)
    return service


def source_and_user(answer):
    return answer.source, next((s.get("username") for s in answer.ice_servers if "username" in s), None)


def test_under_the_limit_cloudflare_serves(guarded, analytics, provider):
    analytics.egress = LIMIT // 2
    assert source_and_user(guarded().answer()) == ("cloudflare", "user-1")
    assert len(analytics.queries) == 1


def test_over_the_limit_the_next_provider_serves_and_cloudflare_is_never_called(guarded, analytics, provider, clock):
    local = LocalProvider()
    service = guarded(providers=[provider, local])
    assert service.answer().source == "cloudflare"
    analytics.egress = LIMIT + 1
    clock.advance(INTERVAL)  # the next reading is due: this request asks, the next one sees it
    service.answer()
    clock.advance(1.01)
    assert source_and_user(service.answer())[0] == "turn-secret" and local.calls == 1
    for _ in range(120):  # a minute: past Cloudflare's cache window and refresh-ahead point
        clock.advance(0.5)
        assert service.answer().source == "turn-secret"
    assert provider.calls == 1  # no refill, no refresh ahead


def test_over_the_limit_without_a_second_provider_the_fallback_serves(guarded, analytics, provider, clock):
    analytics.egress = LIMIT * 3
    service = primed(guarded(turn_servers=STATIC), clock)
    answer = service.answer()
    assert answer.source == "static" and answer.headers["Cache-Control"] == "no-store"
    assert provider.calls == 0
    assert service.readiness()[:2] == (True, {"redis": True, "upstream": True})  # a policy, not an outage


def cross_the_limit(service, analytics, clock):
    """Egress goes over the limit; the next reading falls due, and the request after it sees it."""
    analytics.egress = LIMIT + 1
    clock.advance(INTERVAL)
    service.answer()
    clock.advance(1.01)
    assert service.answer().source == "turn-secret"


def test_back_under_the_cloudflare_credential_returns_at_once(guarded, analytics, provider, clock):
    local = LocalProvider()
    service = guarded(providers=[provider, local])
    assert source_and_user(service.answer()) == ("cloudflare", "user-1")
    cross_the_limit(service, analytics, clock)
    analytics.egress = LIMIT - 1  # a raised limit, or a new month
    clock.advance(INTERVAL)
    service.answer()
    clock.advance(1.01)
    assert source_and_user(service.answer()) == ("cloudflare", "user-1")  # the cached one, not the next provider's
    assert provider.calls == 1


@pytest.mark.parametrize(("unknown_closed", "source"), [(False, "cloudflare"), (True, "static")])
def test_without_a_reading_open_serves_cloudflare_and_closed_does_not(guarded, analytics, provider, unknown_closed, source):
    analytics.failure = "the analytics API answered 500"
    service = guarded(unknown_closed=unknown_closed, turn_servers=STATIC)
    assert service.answer().source == source  # from the very first request
    assert provider.calls == (0 if unknown_closed else 1)


def test_a_failed_reading_keeps_the_last_one_while_it_is_fresh(guarded, analytics, provider, clock):
    analytics.egress = LIMIT // 2
    service = primed(guarded(turn_servers=STATIC, unknown_closed=True), clock)
    assert service.answer().source == "cloudflare"
    analytics.failure = "the analytics API did not answer within 10 s"
    seen = []
    for _ in range(int(FRESH_INTERVALS * INTERVAL / 0.25) + 8):
        clock.advance(0.25)
        seen.append((round(clock() - 1_800_000_000, 2), service.answer().source))
    assert {source for at, source in seen if at < FRESH_INTERVALS * INTERVAL} == {"cloudflare"}
    assert {source for at, source in seen if at >= FRESH_INTERVALS * INTERVAL + 1.01} == {"static"}  # unknown: closed


def test_a_reading_past_the_limit_counts_however_old_within_its_month(guarded, analytics, provider, clock):
    # Failed before: once the reading was a few intervals old (a worker idle a while, or the analytics failing), the
    # state was "unknown", and with ICE_USAGE_UNKNOWN=open a worker handed out and refilled Cloudflare credentials past
    # the ceiling on its next request. A month's egress never falls.
    analytics.egress = LIMIT + 1
    service = primed(guarded(turn_servers=STATIC), clock)
    assert service.answer().source == "static"
    analytics.failure = "the analytics API did not answer within 10 s"
    calls = provider.calls
    for _ in range(10):
        clock.advance(FRESH_INTERVALS * INTERVAL)  # idle, then one request
        assert service.answer().source == "static"
    assert provider.calls == calls


def test_one_query_per_interval_for_workers_sharing_a_store(make_service, clock, analytics):
    store = MemoryStore(clock)  # the shared cache
    workers = []
    for _ in range(4):
        policy = StorePolicy(store, clock)
        guard = EgressGuard(analytics, policy, LIMIT, INTERVAL, clock=clock, spawn=lambda target: target())
        workers.append(make_service(store=store, policy=policy, egress=guard))
    for _ in range(80):  # 20 s
        for worker in workers:
            worker.answer()
        clock.advance(0.25)
    assert 9 <= len(analytics.queries) <= 11


def test_a_new_month_makes_the_reading_stale(guarded, analytics, clock):
    clock.now = 1_801_439_998.0  # 2027-01-31T23:59:58Z
    analytics.egress = LIMIT + 1
    service = primed(guarded(turn_servers=STATIC), clock)
    assert service.answer().source == "static"
    clock.advance(1.01)  # February: January's reading says nothing about it
    assert month_start(clock()) == "2027-02-01"
    analytics.egress = 0
    service.answer()  # unknown (open), and a reading is asked for
    clock.advance(1.01)
    assert service.answer().source == "cloudflare"
    assert len(analytics.queries) == 2


def test_state_changes_are_logged_once_naming_the_limit(guarded, analytics, clock, caplog):
    service = guarded(turn_servers=STATIC)
    with caplog.at_level(logging.INFO, logger="ice_servers"):
        analytics.egress = LIMIT * 2
        for _ in range(40):
            service.answer()
            clock.advance(0.25)
        analytics.egress = 0
        for _ in range(40):
            service.answer()
            clock.advance(0.25)
    over = [r for r in caplog.records if "past ICE_EGRESS_LIMIT_GB=1" in r.getMessage()]
    under = [r for r in caplog.records if "under ICE_EGRESS_LIMIT_GB=1: handing out Cloudflare credentials again" in r.getMessage()]
    assert len(over) == 1 and over[0].levelname == "WARNING" and "2.000 GB" in over[0].getMessage()
    assert len(under) == 1 and under[0].levelname == "WARNING"


def test_the_gauges_show_the_reading_and_the_limit(guarded, analytics, clock):
    analytics.egress = 123_456_789
    client = create_app(Settings(), service=primed(guarded(), clock)).test_client()
    client.get("/api/ice-servers")
    text = client.get("/metrics").get_data(as_text=True)
    assert "ice_turn_egress_bytes 1.23456789e+08" in text and "ice_turn_egress_limit_bytes 1e+09" in text


def test_ice_status_shows_the_egress_line(guarded, analytics, clock):
    clock.now = time.time() - 30  # ice-status reads the real clock: the reading was taken 30 s ago
    analytics.egress = 2_500_000_000
    store = RedisStore(fakeredis.FakeRedis(), clock=clock)
    service = guarded(store=store, turn_servers=STATIC)
    service.answer()
    result = create_app(Settings(), service=service).test_cli_runner().invoke(args=["ice-status"])
    egress = [line for line in result.output.splitlines() if line.startswith("Egress:")]
    assert len(egress) == 1
    assert re.fullmatch(
        rf"Egress:       2\.500 GB of 1 GB since {month_start(clock())}, read (29|30|31) s ago; "
        "past the limit: no Cloudflare credential is handed out",
        egress[0],
    )


# -- the analytics client against the stand-in ----------------------------------------------


@pytest.fixture
def graphql():
    with GraphqlStub() as stub:
        yield stub


def client_for(graphql, token=ANALYTICS_TOKEN, account=ACCOUNT_ID):
    return AnalyticsClient(graphql.url, token, account, "test-key-id", timeout=(1.0, 1.0))


def test_the_query_sums_the_groups_of_the_account_key_and_month(graphql):
    graphql.egress = 7_000_000_001
    now = time.time()
    assert client_for(graphql).egress_bytes(now) == 7_000_000_001
    assert graphql.queries[0]["account"] == ACCOUNT_ID and graphql.queries[0]["keyId"] == "test-key-id"
    assert graphql.queries[0]["date_geq"] == time.strftime("%Y-%m-01", time.gmtime(now))
    assert not graphql.queries[0]["datetime_filter"]


def test_no_groups_is_zero_egress(graphql):
    assert client_for(graphql).egress_bytes(time.time()) == 0


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("graphql-error", "the analytics API answered an error: query cost limit exceeded"),
        ("error500", "the analytics API answered 500"),
        ("garbage", "the analytics API answered something that is not a JSON object"),
        ("hang", "the analytics API did not answer within 2 s"),
    ],
)
def test_failures_are_not_a_reading(graphql, mode, message):
    graphql.mode = mode
    with pytest.raises(UsageUnavailable) as excinfo:
        client_for(graphql).egress_bytes(time.time())
    assert str(excinfo.value) == message and ANALYTICS_TOKEN not in str(excinfo.value)


def test_a_wrong_token_or_account_is_not_a_reading(graphql):
    with pytest.raises(UsageUnavailable, match="not authorized"):
        client_for(graphql, token="another-token-entirely").egress_bytes(time.time())
    with pytest.raises(UsageUnavailable, match="knows no such account"):
        client_for(graphql, account="another-test-account-id").egress_bytes(time.time())


# -- settings --------------------------------------------------------------------------------

CLOUDFLARE = {"CLOUDFLARE_TURN_TOKEN_ID": "test-key-id", "CLOUDFLARE_API_TOKEN": "test-api-token-not-a-secret"}
CEILING = {**CLOUDFLARE, "ICE_EGRESS_LIMIT_GB": "1000", "CLOUDFLARE_ACCOUNT_ID": ACCOUNT_ID, "CLOUDFLARE_ANALYTICS_TOKEN": ANALYTICS_TOKEN}


def test_the_ceiling_settings_are_read():
    settings = load_settings({**CEILING, "ICE_USAGE_CHECK_INTERVAL": "2", "ICE_USAGE_UNKNOWN": "closed"})
    assert settings.egress_limit_bytes == 1_000_000_000_000 and settings.usage_interval == 2 and settings.usage_unknown_closed
    assert settings.graphql_url == "https://api.cloudflare.com/client/v4/graphql"
    assert ANALYTICS_TOKEN not in repr(settings)
    assert load_settings(CLOUDFLARE).egress_limit_bytes is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"CLOUDFLARE_ACCOUNT_ID": ""}, "CLOUDFLARE_ACCOUNT_ID is not set: ICE_EGRESS_LIMIT_GB needs it"),
        ({"CLOUDFLARE_ANALYTICS_TOKEN": ""}, "CLOUDFLARE_ANALYTICS_TOKEN is not set: ICE_EGRESS_LIMIT_GB needs it"),
        ({"ICE_EGRESS_LIMIT_GB": "lots"}, "ICE_EGRESS_LIMIT_GB must be a number of decimal GB"),
        ({"ICE_EGRESS_LIMIT_GB": "-1"}, "ICE_EGRESS_LIMIT_GB must be a number of decimal GB"),
        ({"ICE_EGRESS_LIMIT_GB": "١٥"}, "ICE_EGRESS_LIMIT_GB must be a number of decimal GB"),  # Arabic-Indic digits: float() takes them
        ({"ICE_USAGE_UNKNOWN": "maybe"}, "ICE_USAGE_UNKNOWN must be open or closed"),
        ({"ICE_USAGE_CHECK_INTERVAL": "0"}, "ICE_USAGE_CHECK_INTERVAL must be between 1 and 86400"),
        ({"CLOUDFLARE_ACCOUNT_ID": 'x"}) { evil'}, "CLOUDFLARE_ACCOUNT_ID must be an id"),
        ({"CLOUDFLARE_TURN_TOKEN_ID": "", "CLOUDFLARE_API_TOKEN": ""}, "CLOUDFLARE_TURN_TOKEN_ID is not set"),
    ],
)
def test_bad_ceiling_settings_stop_the_start_naming_the_variable(change, message):
    with pytest.raises(ConfigError, match=message) as excinfo:
        load_settings({**CEILING, **change})
    assert ANALYTICS_TOKEN not in str(excinfo.value)


def test_a_worker_that_loses_redis_decides_on_the_last_reading_it_saw(guarded, analytics, clock):
    server = fakeredis.FakeServer()
    analytics.egress = LIMIT + 1
    other = StorePolicy(RedisStore(fakeredis.FakeRedis(server=server), clock=clock), clock)
    EgressGuard(analytics, other, LIMIT, INTERVAL, clock=clock, spawn=lambda target: target()).over()  # another worker reads
    service = guarded(store=RedisStore(fakeredis.FakeRedis(server=server), clock=clock), turn_servers=STATIC)
    assert service.answer().source == "static"  # from the reading in Redis
    assert len(analytics.queries) == 1
    server.connected = False  # Redis gone
    analytics.failure = "could not reach the analytics API (ConnectionError)"
    for _ in range(8):
        clock.advance(0.5)
        assert service.answer().source == "static"


def test_revoking_past_the_limit_revokes_and_the_revoked_credential_never_comes_back(guarded, analytics, provider, clock):
    # Revoke always revokes (the operator asked), and the tombstone keeps it out once the reading drops under again.
    from app.core.operations import revoke

    provider.revoked = []
    provider.revoke = provider.revoked.append
    local = LocalProvider()
    store = MemoryStore(clock)
    store.shared = True  # as Redis: the operator's command reaches it
    service = guarded(store=store, providers=[provider, local])
    assert source_and_user(service.answer()) == ("cloudflare", "user-1")
    cross_the_limit(service, analytics, clock)
    done = revoke(service)
    assert provider.revoked == ["user-1"] and done.new.source == "turn-secret" and provider.calls == 1  # Cloudflare not asked
    analytics.egress = LIMIT - 1  # back under
    clock.advance(INTERVAL)
    service.answer()
    clock.advance(1.01)
    assert source_and_user(service.answer()) == ("cloudflare", "user-2")  # a new one, never the revoked user-1
    assert provider.calls == 2


def test_a_reading_of_another_turn_key_or_account_does_not_count(guarded, analytics, provider, clock):
    # A rotated TURN key (or account) must not stay behind the old one's ceiling for the rest of the month.
    from app.spend.analytics import month_start
    from app.spend.ceiling import READING, Reading

    service = guarded(turn_servers=STATIC)
    old = Reading(LIMIT * 5, clock(), month_start(clock()), "test-account/old-key")
    service.egress._policy.local.write(f"{READING}:{month_start(clock())}", old.to_json(), 3600)
    analytics.failure = "the analytics API answered 500"
    assert service.answer().source == "cloudflare"  # no reading of this key yet: ICE_USAGE_UNKNOWN=open decides


def test_the_stand_in_refuses_a_field_the_analytics_page_does_not_document_and_takes_the_query(graphql, monkeypatch):
    # Failed before (the stand-in took any filter): a typo in the query would pass every test while Cloudflare refused
    # every reading, and with ICE_USAGE_UNKNOWN=open the ceiling would never engage.
    from app.spend import analytics
    from tests.graphql_stub import unknown_field

    real = analytics.egress_query
    assert unknown_field(real(ACCOUNT_ID, "test-key-id", "2026-12-01")) is None
    documented = (  # the TURN analytics page's example, with the older datetimeMinute filters and a dimension
        'query{ viewer { usage: accounts(filter: { accountTag: "x" }) { callsTurnUsageAdaptiveGroups( filter: { '
        'datetimeMinute_gt: "2024-07-15T02:07:07Z" datetimeMinute_lt: "2024-08-10T02:07:05Z" } limit: 2 '
        "orderBy: [sum_egressBytes_DESC] ) { dimensions { keyId } sum { egressBytes } } } } }"
    )
    assert unknown_field(documented) is None
    for wrong, field in (("date_geq", "day_geq"), ("egressBytes", "egressbytes"), ("limit", "first")):
        monkeypatch.setattr(analytics, "egress_query", lambda *args, wrong=wrong, field=field: real(*args).replace(wrong, field))
        with pytest.raises(UsageUnavailable) as refused:
            client_for(graphql).egress_bytes(time.time())
        assert str(refused.value) == f'the analytics API answered 400: unknown field "{field}"'


def test_the_first_reading_of_a_month_is_not_held_behind_last_months_claim(make_service, clock, analytics):
    # Failed before: the claim on the next query was one key for every month, so with a day's interval the new month's
    # first reading waited up to a day behind the claim made on the last evening of the old one.
    clock.now = 1_801_439_990.0  # 2027-01-31T23:59:50Z
    store = MemoryStore(clock)
    policy = StorePolicy(store, clock)
    guard = EgressGuard(analytics, policy, LIMIT, 86_400, clock=clock, spawn=lambda target: target())
    analytics.egress = LIMIT + 1
    guard.over()  # January's reading, and January's claim for a day
    clock.advance(11)  # February
    analytics.egress = 0
    assert guard.over() is False or guard.over() is False  # the claim of February is free: asked at once
    assert len(analytics.queries) == 2
    clock.advance(1.01)
    assert guard.over() is False  # February's reading, under the limit


def test_a_new_month_shows_no_egress_until_its_first_reading(guarded, analytics, clock):
    # Failed before: the gauge kept last month's figure, so a critical "ceiling reached" kept firing into the new month.
    clock.now = 1_801_439_998.0  # 2027-01-31T23:59:58Z
    analytics.egress = LIMIT + 1
    service = primed(guarded(turn_servers=STATIC), clock)
    client = create_app(Settings(), service=service).test_client()
    client.get("/api/ice-servers")
    assert "ice_turn_egress_bytes 1.000000001e+09" in client.get("/metrics").get_data(as_text=True)
    analytics.failure = "the analytics API answered 500"
    clock.advance(2.02)  # February, and no reading of it
    client.get("/api/ice-servers")
    assert "ice_turn_egress_bytes NaN" in client.get("/metrics").get_data(as_text=True)


def test_failed_readings_and_the_age_of_the_last_good_one_are_in_the_metrics_and_ice_status(guarded, analytics, clock):
    from app.web.metrics import reading_metrics

    failed_before = reading_metrics()[2].labels("failed")._value.get()
    clock.now = time.time() - 60  # ice-status reads the real clock
    analytics.egress = 123
    service = guarded(turn_servers=STATIC)  # an in-process store: its claims expire by the test's clock
    service.answer()  # the first reading
    good_at = clock()
    clock.advance(INTERVAL * 5)
    analytics.failure = 'the analytics API answered 400: unknown field "day_geq"'
    service.answer()
    app = create_app(Settings(), service=service)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert reading_metrics()[2].labels("failed")._value.get() == failed_before + 1
    shown = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("ice_turn_egress_")}
    assert shown["ice_turn_egress_reading_timestamp_seconds"] == pytest.approx(good_at)
    assert shown["ice_turn_egress_check_interval_seconds"] == INTERVAL


def test_ice_status_says_when_and_why_the_last_reading_failed(guarded, analytics, clock):
    clock.now = time.time() - 30  # ice-status reads the real clock: the reading failed 30 s ago
    analytics.failure = 'the analytics API answered 400: unknown field "day_geq"'
    service = guarded(store=RedisStore(fakeredis.FakeRedis(), clock=clock), turn_servers=STATIC)
    service.answer()
    output = create_app(Settings(), service=service).test_cli_runner().invoke(args=["ice-status"]).output
    egress = [line.strip() for line in output.splitlines() if "reading" in line]
    assert egress[0] == "Egress:       no reading yet; limit 1 GB".strip()
    assert re.fullmatch(r'the last reading failed (29|30|31) s ago: the analytics API answered 400: unknown field "day_geq"', egress[1])
    assert ANALYTICS_TOKEN not in output
