"""IceService read path, refill, refresh ahead, stale-if-error, cool-down and Redis failure, on a fake clock."""

import logging

import pytest

from app.core.cache import LOCAL_STALENESS, WAIT_BUDGET
from app.core.errors import RefreshError, StoreUnavailable
from app.core.operations import refresh
from app.core.store_policy import SHARED_RETRY_AFTER
from app.store.memory import MemoryStore
from tests.conftest import T0, LocalProvider

STATIC = ({"urls": ["turn:static.example.test:3478"], "username": "static-user", "credential": "static-password"},)


class SwitchableStore(MemoryStore):
    """A shared store that can be made unreachable, like Redis going down."""

    shared = True

    def __init__(self, clock):
        super().__init__(clock)
        self.down = False
        self.calls = 0

    def __getattribute__(self, name):
        attribute = super().__getattribute__(name)
        if name in ("get", "snapshot", "put", "acquire_lock", "release_lock", "start_cooldown", "clear_failures", "ping"):
            self.calls += 1
            if super().__getattribute__("down"):
                raise StoreUnavailable("could not connect to Redis")
        return attribute


def test_cold_cache_fetches_once_and_serves_the_credential(make_service, provider):
    answer = make_service().answer()
    assert provider.calls == 1
    assert answer.source == "cloudflare" and answer.body()["ttl"] == 24
    assert answer.ice_servers[1]["username"] == "user-1"


def test_warm_cache_serves_without_upstream_calls(make_service, provider, clock):
    service = make_service()
    for _ in range(50):
        service.answer()
        clock.advance(0.1)
    assert provider.calls == 1


def test_no_answer_may_be_cached_fresh_or_degraded(make_service, provider, clock):
    service = make_service()
    assert service.answer().headers == {"Cache-Control": "no-store"}
    clock.advance(13)
    provider.fail(500)
    clock.advance(12)
    degraded = service.answer()
    assert degraded.source == "stun-only" and degraded.headers == {"Cache-Control": "no-store"}


def test_credential_is_replaced_after_its_window(make_service, provider, clock):
    service = make_service()
    service.answer()
    clock.advance(12)
    assert service.answer().ice_servers[1]["username"] == "user-2"
    assert provider.calls == 2


def test_refresh_ahead_replaces_the_credential_before_the_window_ends(make_service, provider, clock):
    service = make_service()
    service.answer()
    clock.advance(9.5)  # last quarter of the 12 s window
    # The refresh runs inline here (as serverless): the request that ran it answers with what it got.
    assert service.answer().ice_servers[1]["username"] == "user-2"
    assert provider.calls == 2
    clock.advance(LOCAL_STALENESS)
    assert service.answer().ice_servers[1]["username"] == "user-2"
    assert provider.calls == 2


def test_every_credential_served_keeps_the_promised_validity(make_service, clock):
    service = make_service()
    ttls = []
    for _ in range(400):
        ttls.append(service.answer().body()["ttl"])
        clock.advance(0.25)
    assert min(ttls) >= 24 - 12


def test_workers_sharing_a_store_call_upstream_once_per_window(make_service, provider, clock):
    store = MemoryStore(clock)
    workers = [make_service(store=store) for _ in range(4)]
    for _ in range(200):
        for worker in workers:
            worker.answer()
        clock.advance(0.25)  # 50 s: about four windows
    # As one worker alone: at 0 s, then every 9 s (refresh ahead in the last quarter of 12 s).
    assert provider.calls == 6


def test_waiter_gets_the_fallback_after_the_bounded_wait(make_service, provider, clock):
    store = MemoryStore(clock)
    store.acquire_lock(60)  # another worker holds the lock and never delivers
    service = make_service(store=store, turn_servers=STATIC)
    started = clock()
    answer = service.answer()
    assert answer.source == "static" and provider.calls == 0
    assert clock() - started <= WAIT_BUDGET


def test_waiter_serves_what_the_lock_holder_stores(make_service, provider, clock):
    store = MemoryStore(clock)
    holder, waiter = make_service(store=store), make_service(store=store)
    token = store.acquire_lock(60)

    def sleep_then_deliver(seconds):
        clock.advance(seconds)
        if clock() - 1_800_000_000 > 1 and store.get() is None:
            holder.shared_cache.refill.fill(store, token)

    waiter.shared_cache.refill._sleep = sleep_then_deliver
    assert waiter.answer().source == "cloudflare"
    assert provider.calls == 1


def test_stale_credential_is_served_until_expiry_when_upstream_fails(make_service, provider, clock):
    service = make_service(turn_servers=STATIC)
    service.answer()
    provider.fail(500)
    served = []
    for _ in range(60):
        clock.advance(0.5)
        answer = service.answer()
        served.append((clock() - T0, answer.source, answer.body()["ttl"]))
    assert all(source == "cloudflare" and ttl >= 1 for at, source, ttl in served if at <= 23)
    assert all(source == "static" for at, source, ttl in served if at > 23)
    assert provider.calls < 10  # cool-downs, not one try per request


def test_fallback_is_stun_only_without_turn_servers(make_service, provider):
    provider.fail(500)
    answer = make_service().answer()
    assert answer.source == "stun-only" and answer.headers["Cache-Control"] == "no-store"
    assert answer.body()["iceServers"] == [{"urls": ["stun:stun.example.test:3478"]}]


def test_degraded_answer_logs_a_warning(make_service, provider, caplog):
    provider.fail(401)
    with caplog.at_level(logging.WARNING, logger="ice_servers"):
        make_service(turn_servers=STATIC).answer()
    assert "Failed to fetch TURN credentials from Cloudflare: Cloudflare answered 401" in caplog.text
    assert "serving static TURN_SERVERS" in caplog.text


def test_no_provider_means_stun_only_without_store_traffic(make_service, clock):
    store = SwitchableStore(clock)
    answer = make_service(store=store, providers=[]).answer()
    assert answer.source == "stun-only" and store.calls == 0


def test_cool_down_blocks_calls_and_grows(make_service, provider, clock):
    service = make_service()
    provider.fail(500)
    service.answer()  # failure 1: 1 s cool-down (jitter fixed at its top)
    service.answer()
    assert provider.calls == 1
    clock.advance(1.01)
    service.answer()  # failure 2: 2 s
    clock.advance(1.01)
    service.answer()
    assert provider.calls == 2
    clock.advance(1.01)
    service.answer()
    assert provider.calls == 3


def test_retry_after_is_honoured(make_service, provider, clock):
    service = make_service()
    provider.fail(429, retry_after=100)
    service.answer()
    for _ in range(99):
        clock.advance(1)
        service.answer()
    assert provider.calls == 1
    clock.advance(1.5)
    service.answer()
    assert provider.calls == 2


def test_recovery_after_an_outage_happens_off_the_request_path(make_service, provider, clock):
    store = MemoryStore(clock)
    background = []
    service = make_service(store=store)
    service.shared_cache._spawn = background.append
    provider.fail(500)
    service.answer()
    provider.failure = None
    clock.advance(1.01)
    assert service.answer().source == "stun-only"  # answered at once, the retry is queued
    assert provider.calls == 1 and len(background) == 1
    background.pop()()
    assert service.answer().source == "cloudflare"
    assert provider.calls == 2 and store.snapshot().failures == 0


def test_redis_down_refills_once_per_process_and_keeps_serving(make_service, provider, clock, caplog):
    store = SwitchableStore(clock)
    store.down = True
    service = make_service(store=store)
    with caplog.at_level(logging.WARNING, logger="ice_servers"):
        answers = [service.answer() for _ in range(20)]
    assert all(a.source == "cloudflare" for a in answers)
    assert provider.calls == 1
    assert "Shared cache unavailable (could not connect to Redis)" in caplog.text


def test_redis_down_serves_the_in_process_copy(make_service, provider, clock):
    store = SwitchableStore(clock)
    service = make_service(store=store)
    service.answer()
    store.down = True
    for _ in range(20):
        clock.advance(0.25)
        assert service.answer().ice_servers[1]["username"] == "user-1"
    assert provider.calls == 1


def test_back_to_redis_when_it_answers(make_service, provider, clock):
    store = SwitchableStore(clock)
    store.down = True
    service = make_service(store=store)
    service.answer()
    store.down = False
    clock.advance(max(SHARED_RETRY_AFTER, LOCAL_STALENESS) + 0.1)
    calls_before = store.calls
    service.answer()
    assert store.calls > calls_before


def test_redis_down_and_upstream_down_does_not_retry_per_request(make_service, provider, clock):
    store = SwitchableStore(clock)
    store.down = True
    provider.fail(500)
    service = make_service(store=store)
    for _ in range(50):
        assert service.answer().source == "stun-only"
    assert provider.calls == 1


def test_refresh_fetches_and_stores_a_new_credential(make_service, provider, clock):
    store = SwitchableStore(clock)
    service = make_service(store=store)
    service.answer()
    credential = refresh(service)
    assert provider.calls == 2 and store.get() == credential
    assert credential.username == "user-2"


def test_refresh_ignores_the_cool_down_and_ends_it(make_service, provider, clock):
    store = SwitchableStore(clock)
    service = make_service(store=store)
    provider.fail(500)
    service.answer()
    provider.failure = None
    refresh(service)
    assert store.snapshot().cooldown == 0 and provider.calls == 2


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda store, provider: provider.fail(401), "Cloudflare: Cloudflare answered 401"),
        (lambda store, provider: setattr(store, "down", True), "shared cache: could not connect to Redis"),
        (lambda store, provider: store.acquire_lock(60), "another refresh still holds the lock"),
    ],
)
def test_refresh_failure_is_one_line(make_service, provider, clock, setup, message):
    store = SwitchableStore(clock)
    service = make_service(store=store)
    setup(store, provider)
    with pytest.raises(RefreshError, match=message) as excinfo:
        refresh(service)
    assert "\n" not in str(excinfo.value)


def test_refresh_needs_a_shared_cache(make_service):
    with pytest.raises(RefreshError, match="REDIS_URL is not set"):
        refresh(make_service())


def test_refresh_needs_a_provider(make_service, clock):
    with pytest.raises(RefreshError, match="no TURN provider"):
        refresh(make_service(store=SwitchableStore(clock), providers=[]))


def test_emptied_store_is_refilled_from_the_process_without_upstream_calls(make_service, provider, clock):
    store = MemoryStore(clock)
    service = make_service(store=store)
    service.answer()
    store._last = None  # Redis restarted empty, or junk written over the entry
    clock.advance(LOCAL_STALENESS + 0.1)
    assert service.answer().ice_servers[1]["username"] == "user-1"
    assert provider.calls == 1 and store.get().username == "user-1"


def test_refresh_ahead_attempts_are_throttled_while_another_worker_refreshes(make_service, provider, clock):
    store = MemoryStore(clock)
    service = make_service(store=store)
    service.answer()
    clock.advance(9.5)  # in the refresh-ahead quarter
    store.acquire_lock(60)  # another worker is refreshing (a slow upstream)
    attempts = []
    service.shared_cache._spawn = lambda target: (attempts.append(clock()), target())
    for _ in range(100):
        service.answer()
        clock.advance(0.01)  # 100 requests within one second
    assert len(attempts) == 1 and provider.calls == 1


def test_next_provider_serves_when_cloudflare_fails_on_a_cold_cache(make_service, provider):
    local = LocalProvider()
    provider.fail(500)
    answer = make_service(providers=[provider, local], turn_servers=STATIC).answer()
    assert answer.source == "turn-secret" and answer.headers["Cache-Control"] == "no-store"
    assert (provider.calls, local.calls) == (1, 1)


def test_stale_cloudflare_credential_is_served_before_the_next_provider(make_service, provider, clock):
    local = LocalProvider()
    service = make_service(providers=[provider, local])
    service.answer()
    provider.fail(500)
    clock.advance(13)  # past the window, still valid
    assert service.answer().ice_servers[1]["username"] == "user-1"
    assert local.calls == 0
    clock.advance(11)  # expired
    assert service.answer().source == "turn-secret" and local.calls == 1


def test_local_provider_serves_at_once_during_the_cool_down(make_service, provider, clock):
    local = LocalProvider()
    store = MemoryStore(clock)
    provider.fail(500)
    store.start_cooldown(60)  # Cloudflare is known to fail fleet-wide
    answer = make_service(store=store, providers=[provider, local]).answer()
    assert answer.source == "turn-secret" and provider.calls == 0 and local.calls == 1


def test_refresh_tries_the_next_provider_and_reports_every_failure(make_service, provider, clock):
    local = LocalProvider()
    store = SwitchableStore(clock)
    provider.fail(401)
    assert refresh(make_service(store=store, providers=[provider, local])).source == "turn-secret"
    with pytest.raises(RefreshError, match="^Cloudflare: Cloudflare answered 401"):
        refresh(make_service(store=store, providers=[provider]))


def test_reused_answers_never_overstate_the_ttl(make_service, clock):
    service = make_service()
    service.shared_cache._spawn = lambda target: None  # no background refresh between the two calls
    for _ in range(200):
        answer = service.answer()
        assert answer.body()["ttl"] == int(answer.expires_at - clock()) >= 1
        assert service.answer() is answer  # the same instant: the same encoded answer
        clock.advance(0.13)


def test_worker_without_a_copy_serves_the_stored_credential_when_its_refill_fails(make_service, provider, clock):
    store = SwitchableStore(clock)  # shared: each worker has its own in-process store beside it
    make_service(store=store).answer()  # another worker fetched the credential
    provider.fail(500)
    clock.advance(13)  # past the window: this worker, which never held it, tries to refill and fails
    answer = make_service(store=store).answer()
    assert answer.source == "cloudflare" and answer.ice_servers[1]["username"] == "user-1"
    assert provider.calls == 2


def test_stun_only_answers_are_reused_within_their_second(make_service, clock):
    service = make_service(providers=[])
    first = service.answer()
    clock.advance(0.3)
    assert service.answer() is first and first.source == "stun-only"
    clock.advance(1.0)
    assert service.answer() is not first
