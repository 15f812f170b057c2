"""The circuit breaker in front of Redis: one probe per time-out, shared by the credential store and the rate limits."""

import logging
import threading

import pytest
import redis

from app.config.rates import parse_rates
from app.core.breaker import PROBE_LIMIT, RETRY_AFTER, CircuitBreaker
from app.core.errors import StoreUnavailable
from app.core.store_policy import StorePolicy, StoreResting
from app.limits.rate_limit import RateLimit
from app.store.memory import MemoryStore
from tests.conftest import FakeClock

pytestmark = pytest.mark.unit


def test_closed_lets_every_call_through():
    breaker = CircuitBreaker(clock=FakeClock())
    assert all(breaker.allow() for _ in range(10)) and not breaker.resting()


def test_a_failure_keeps_every_caller_off_redis_until_the_time_out_ends():
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    breaker.failed("Redis did not answer within 0.5 s")
    assert breaker.resting() and not any(breaker.allow() for _ in range(10))
    clock.advance(RETRY_AFTER - 0.01)
    assert not breaker.allow()


def test_once_the_time_out_ends_one_caller_probes_and_the_others_go_on_without_redis():
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    breaker.failed("Redis did not answer within 0.5 s")
    clock.advance(RETRY_AFTER)
    assert not breaker.resting()  # a caller may try: the first to ask is the probe
    assert [breaker.allow() for _ in range(5)] == [True, False, False, False, False]
    assert breaker.resting()


def test_the_probe_answering_closes_it_for_everyone():
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    breaker.failed("x")
    clock.advance(RETRY_AFTER)
    assert breaker.allow()
    breaker.succeeded()
    assert all(breaker.allow() for _ in range(5)) and not breaker.is_open


def test_the_probe_failing_opens_it_for_another_time_out():
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    breaker.failed("x")
    clock.advance(RETRY_AFTER)
    assert breaker.allow()
    clock.advance(0.5)  # the probe's socket timeout
    breaker.failed("x")
    clock.advance(RETRY_AFTER - 0.01)
    assert not breaker.allow()
    clock.advance(0.01)
    assert breaker.allow()


def test_a_call_that_was_on_its_way_when_it_opened_does_not_push_the_probe_back():
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    breaker.failed("x")
    clock.advance(0.5)
    breaker.failed("x")  # another thread's timeout, from before it opened
    clock.advance(RETRY_AFTER - 0.5)
    assert breaker.allow()


def test_a_probe_that_never_reports_is_presumed_lost():
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    breaker.failed("x")
    clock.advance(RETRY_AFTER)
    assert breaker.allow()
    clock.advance(PROBE_LIMIT)
    assert breaker.allow()


def test_the_change_is_said_once_each_way(caplog):
    caplog.set_level(logging.INFO, logger="ice_servers")
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    for _ in range(3):
        breaker.failed("Redis did not answer within 0.5 s")
        clock.advance(RETRY_AFTER)
        breaker.allow()
    breaker.succeeded()
    breaker.succeeded()
    assert caplog.text.count("Shared cache unavailable (Redis did not answer within 0.5 s)") == 1
    assert caplog.text.count("Redis answers again") == 1


class HangingStore(MemoryStore):
    """A shared store whose every call fails as a Redis that hangs would, counting the calls that reached it."""

    shared = True

    def __init__(self, clock):
        super().__init__(clock)
        self.reached = 0

    def snapshot(self):
        self.reached += 1
        raise StoreUnavailable("Redis did not answer within 0.5 s")


def test_while_the_store_rests_its_calls_never_reach_redis():
    clock = FakeClock()
    store = HangingStore(clock)
    policy = StorePolicy(store, clock)
    with pytest.raises(StoreUnavailable):
        policy.shared.snapshot()
    for _ in range(50):
        with pytest.raises(StoreResting):
            policy.shared.snapshot()
    assert store.reached == 1 and policy.use_local(clock())
    clock.advance(RETRY_AFTER)
    assert not policy.use_local(clock())
    with pytest.raises(StoreUnavailable):
        policy.shared.snapshot()  # the probe
    assert store.reached == 2


def test_the_rate_limit_and_the_store_share_one_breaker(monkeypatch):
    # A Redis that hangs costs one probe per process, not one for the store and another for the limiter.
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    policy = StorePolicy(HangingStore(clock), clock, breaker=breaker)
    client = redis.Redis(port=1)
    calls = []
    limit = RateLimit(parse_rates("3 per minute"), client, clock=clock, breaker=breaker)
    monkeypatch.setattr(limit._shared, "check", lambda key: calls.append(key) or (_ for _ in ()).throw(redis.TimeoutError()))
    with pytest.raises(StoreUnavailable):
        policy.shared.snapshot()
    assert [limit.hit("a") is None for _ in range(4)] == [True, True, True, False]  # counted in memory meanwhile
    assert calls == []
    clock.advance(RETRY_AFTER)
    limit.hit("b")
    assert calls == ["b"]  # the one probe
    with pytest.raises(StoreResting):
        policy.shared.snapshot()


def test_only_one_of_many_threads_probes():
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    breaker.failed("x")
    clock.advance(RETRY_AFTER)
    allowed = []
    threads = [threading.Thread(target=lambda: allowed.append(breaker.allow())) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 1


def test_an_error_redis_answers_with_fails_that_call_and_leaves_the_breaker_closed(monkeypatch, caplog):
    # A NOPERM or a full Redis (OOM) refusing the limiter's script is not an outage: the store must keep using Redis.
    breaker = CircuitBreaker(clock=FakeClock())
    limit = RateLimit(parse_rates("3 per minute"), redis.Redis(port=1), breaker=breaker)
    refusal = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    monkeypatch.setattr(limit._shared, "check", lambda key: (_ for _ in ()).throw(refusal))
    assert [limit.hit("a") is None for _ in range(4)] == [True, True, True, False]  # counted in memory meanwhile
    assert not breaker.is_open
    assert caplog.text.count("Redis refuses the rate limit's script (OOM: Redis is full, maxmemory)") == 1


def test_an_answered_store_error_does_not_open_the_breaker():
    clock = FakeClock()

    class Refusing(HangingStore):
        def snapshot(self):
            self.reached += 1
            raise StoreUnavailable("Redis refused a command (NOPERM)", answered=True)

    store = Refusing(clock)
    policy = StorePolicy(store, clock)
    for _ in range(3):
        with pytest.raises(StoreUnavailable) as refused:
            policy.shared.snapshot()
        policy.failed(refused.value)
    assert store.reached == 3 and not policy.breaker.is_open


def test_a_late_success_of_a_call_from_before_it_opened_neither_closes_it_nor_starts_a_second_probe():
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    breaker.failed("x")
    straggler = threading.Thread(target=breaker.succeeded)  # another thread's call, answered by a healthy cluster node
    straggler.start()
    straggler.join()
    assert breaker.is_open
    clock.advance(RETRY_AFTER)
    assert breaker.allow()  # the probe
    late = threading.Thread(target=lambda: breaker.failed("late timeout"))
    late.start()
    late.join()
    assert not breaker.allow()  # the probe is still the only one in flight
