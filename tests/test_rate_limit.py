"""The rate limit: exact fleet-wide counts, no round trip for callers far from their limit, a cheap refusal, memory while Redis fails."""

import json
import logging
import random
import threading
import time

import pytest
import redis

from app.config.redis_url import parse_redis_url
from app.limits import fleet_count
from app.limits.fleet_count import FleetCount, Limit
from app.limits.rate_limit import RateLimit
from app.store.connect import Connection
from tests.servers import RedisServer, wait_until

COUNT_KEYS = "ice-servers:{ratelimit}:count:*"


def calls_of(fleet: FleetCount) -> list[str]:
    """Record the mode ("check", "settle", "leave") of each script call ``fleet`` makes from here on; no other's.

    Not the server's own count: limits of earlier tests in this process may still be settling on the same server.
    """
    calls, script = [], fleet._script
    fleet._script = lambda keys, args: calls.append(args[0]) or script(keys=keys, args=args)
    return calls


def counted(client) -> int:
    """Return the admissions recorded in Redis over all callers."""
    return sum(client.llen(key) for key in client.scan_iter(COUNT_KEYS))


@pytest.fixture
def own_redis_url(tmp_path):
    """Run a redis-server of this test's own: no limit of another test, still settling in this process, counts in it."""
    server = RedisServer(tmp_path).start()
    yield server.url
    server.stop()


def settled(limit: RateLimit) -> None:
    """Settle this limit's admissions made alone, as its background thread does every PERIOD."""
    limit._shared.settle()


def test_callers_far_from_their_limit_cost_no_round_trip_and_are_all_counted(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    limit = RateLimit("600 per minute", Connection(parse_redis_url(redis_url)).client)
    assert limit.hit("198.51.100.1") is None  # checked in Redis: no settlement has run yet
    settled(limit)
    calls = calls_of(limit._shared)
    answers = [limit.hit(f"10.0.{n // 256}.{n % 256}") for n in range(2000)]
    during = len(calls)
    settled(limit)
    assert answers == [None] * 2000
    # the background settlements only (one every 50 ms, a batch each), never one per request
    assert during < 100
    assert counted(client) == 2001


def test_a_second_request_within_a_settlement_is_checked_in_redis(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    limit = RateLimit("600 per minute", Connection(parse_redis_url(redis_url)).client)
    settled(limit)
    calls = calls_of(limit._shared)
    assert [limit.hit("203.0.113.1") for _ in range(3)] == [None] * 3
    assert len(calls) in (2, 3)  # one alone (unless a settlement ran between), then checks
    settled(limit)
    assert counted(client) == 3


def test_several_processes_flooding_one_caller_admit_exactly_the_limit(redis_url):
    """Four processes' worth of limits, eight threads each, one caller: exactly 100 pass, however they interleave."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    limits = [RateLimit("100 per minute", Connection(parse_redis_url(redis_url)).client, "too many") for _ in range(4)]
    for limit in limits:
        limit.hit("warm-up")  # starts each one's settling thread
    time.sleep(0.2)
    admitted, lock = [], threading.Lock()

    def flood(limit: RateLimit) -> None:
        for _ in range(60):
            answer = limit.hit("203.0.113.7")
            with lock:
                admitted.append(answer is None)
            time.sleep(0.01)  # about 0.6 s of flood: beyond the margin's transition after the caller turns hot

    threads = [threading.Thread(target=flood, args=(limit,)) for limit in limits for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 1920 and sum(admitted) == 100
    key = "ice-servers:{ratelimit}:count:100/60000:203.0.113.7"
    wait_until(lambda: client.llen(key) == 100, 5, what="every admission settled")  # the last ones alone, next settlement


def test_a_refusal_is_built_once_writes_nothing_and_the_next_ones_cost_no_round_trip(own_redis_url):
    client = redis.Redis.from_url(own_redis_url)  # its own server: the count of writes is this test's only
    limit = RateLimit("5 per 2 seconds", Connection(parse_redis_url(own_redis_url)).client, message="too many requests from this address")
    checks = calls_of(limit._shared)
    assert [limit.hit("203.0.113.1") for _ in range(5)] == [None] * 5
    writes = client.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0)
    del checks[:]
    refused = [limit.hit("203.0.113.1") for _ in range(40)]
    assert checks.count("check") == 1  # the first refusal learns when a slot can be free; the others wait for it here
    assert client.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0) == writes
    assert all(answer is refused[0] for answer in refused)
    body, headers = refused[0]
    assert json.loads(body) == {"error": "too many requests from this address", "status": 429}
    assert headers["Retry-After"] == "2"
    assert limit.hit("203.0.113.2") is None  # another caller has its own count
    time.sleep(2.1)  # the first admissions leave the window
    assert limit.hit("203.0.113.1") is None


def test_without_redis_each_worker_counts_in_memory_and_says_so_once(caplog):
    limit = RateLimit("3 per minute", Connection(parse_redis_url("redis://127.0.0.1:1/0")).client)
    with caplog.at_level(logging.WARNING, logger="ice_servers"):
        answers = [limit.hit("203.0.113.9") for _ in range(5)]
    assert answers[:3] == [None] * 3 and answers[3] is not None and answers[4] is not None
    assert caplog.text.count("Rate limit storage unavailable") == 1


def test_admissions_made_alone_survive_a_failed_settlement(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    limit = RateLimit("600 per minute", Connection(parse_redis_url(redis_url)).client)
    settled(limit)
    assert [limit.hit(f"10.1.0.{n}") for n in range(20)] == [None] * 20
    shared = limit._shared
    script, shared._script = shared._script, lambda **_: (_ for _ in ()).throw(redis.ConnectionError("down"))
    shared.settle()  # fails: the admissions are kept, and nobody is admitted alone meanwhile
    assert shared._hot is None
    shared._script = script
    settled(limit)
    assert counted(client) == 20


def test_several_limits_are_all_counted():
    limit = RateLimit("2 per second; 3 per minute")
    assert [limit.hit("a") is None for _ in range(3)] == [True, True, False]


def test_in_memory_the_window_moves_and_quiet_callers_are_forgotten(monkeypatch):
    from app.limits import local_count

    monkeypatch.setattr(local_count, "SWEEP_EVERY", 3)
    now = [100.0]
    limit = RateLimit("2 per 10 seconds", clock=lambda: now[0])
    assert [limit.hit("a") is None for _ in range(3)] == [True, True, False]
    now[0] += 5
    assert limit.hit("a") is not None  # both admissions are still in the window
    now[0] += 5.1
    assert limit.hit("a") is None and limit.hit("b") is None  # the first two left it; a sweep ran, forgetting nobody
    now[0] += 10.1
    assert limit.hit("c") is None and limit.hit("c") is None  # the third admission since: a sweep forgets "a" and "b"
    assert set(limit._local._times[0]) == {"c"}


def test_an_idle_worker_leaves_the_count_and_joins_again_on_its_next_request(redis_url, monkeypatch):
    monkeypatch.setattr(fleet_count, "IDLE_AFTER", 0.3)
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    limit = RateLimit("600 per minute", Connection(parse_redis_url(redis_url)).client)
    assert limit.hit("203.0.113.30") is None
    member = limit._shared._process  # other tests' limits may still be settling in this process

    def counted_in() -> bool:
        return client.zscore("ice-servers:{ratelimit}:settled", member) is not None

    wait_until(counted_in, 5, what="the first settlement")
    wait_until(lambda: not counted_in(), 5, what="leaving when idle")  # it settled, left, and sleeps
    assert limit._shared._hot is None  # nobody is admitted alone meanwhile
    assert limit.hit("203.0.113.30") is None  # checked in Redis, and wakes the settling thread
    wait_until(lambda: counted_in() and limit._shared._hot is not None, 5, what="joining again")


def test_a_settlement_in_flight_as_the_worker_exits_cannot_count_it_again(own_redis_url):
    """The exit waits for the settlement in flight, then leaves; nothing reaches Redis after its leave.

    Found by CI: after gunicorn's quick shutdown, one stopped worker was still counted in Redis. Its settling thread's
    call landed after the exit's leave and registered it again, shrinking every caller's room for 5 s.
    """
    client = redis.Redis.from_url(own_redis_url)
    fleet = FleetCount(Connection(parse_redis_url(own_redis_url)).client, [Limit(600, 60_000)], clock=lambda: 100.0)
    fleet._spawn = lambda target: None  # this test plays the settling thread
    fleet.admit("warm-up")
    fleet.settle()
    in_flight, go_on, landed, script = threading.Event(), threading.Event(), [], fleet._script

    def call(keys, args):
        if threading.current_thread().name == "settling":
            in_flight.set()
            go_on.wait(5)
        answer = script(keys=keys, args=args)
        landed.append(args[0])
        return answer

    fleet._script = call
    assert fleet.admit("10.3.0.1") is None  # admitted alone
    settling = threading.Thread(target=fleet.settle, name="settling")
    settling.start()
    assert in_flight.wait(5)
    exiting = threading.Thread(target=fleet._at_exit)
    exiting.start()
    exiting.join(0.3)
    assert exiting.is_alive()  # waiting for the settlement in flight, which cannot finish before go_on
    go_on.set()
    settling.join(5)
    exiting.join(5)
    fleet.settle()  # the settling thread's next turn, after the exit
    assert landed == ["settle", "settle", "leave"]
    assert client.zscore(fleet_count.LAST, fleet._process) is None
    assert counted(client) == 2


def test_a_request_admitted_alone_while_the_worker_exits_is_settled_before_it_leaves(own_redis_url):
    """Request threads may still answer during the exit's settlement: a second try settles them, then leaves."""
    client = redis.Redis.from_url(own_redis_url)
    fleet = FleetCount(Connection(parse_redis_url(own_redis_url)).client, [Limit(600, 60_000)], clock=lambda: 100.0)
    fleet._spawn = lambda target: None
    fleet.admit("warm-up")
    fleet.settle()
    landed, script = [], fleet._script

    def call(keys, args):
        if not landed:  # the exit's settlement is on its way: a request thread still answers
            assert fleet.admit("10.3.0.2") is None  # admitted alone
        landed.append(args[0])
        return script(keys=keys, args=args)

    fleet._script = call
    fleet._at_exit()
    assert landed == ["settle", "settle", "leave"]
    assert client.zscore(fleet_count.LAST, fleet._process) is None
    assert counted(client) == 2


def test_too_many_callers_near_their_limit_and_nobody_is_admitted_alone(redis_url, monkeypatch):
    monkeypatch.setattr(fleet_count, "MAX_HOT", 0)
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    limit = RateLimit("100 per minute", Connection(parse_redis_url(redis_url)).client)
    while limit.hit("203.0.113.40") is None:  # one caller up to its limit: it is hot
        pass
    settled(limit)
    assert client.zcard("ice-servers:{ratelimit}:hot") == 1 and limit._shared._hot is None
    checks = calls_of(limit._shared)
    assert [limit.hit(f"10.2.0.{n}") for n in range(5)] == [None] * 5
    assert checks.count("check") == 5


def test_processes_joining_faster_than_two_settlements_never_let_a_caller_past_its_limit(own_redis_url):
    """Two processes admit alone under a small fleet's margin; six join before those two settle again; exactly 30 pass.

    Found by CI: two gunicorn hosts of four workers let 32 of "30 per minute" through while the workers were still
    registering. Settlements are run by hand here (no settling thread) and the clock stands still, so the order is fixed.
    """
    client = redis.Redis.from_url(own_redis_url)
    client.flushall()
    fleets = [FleetCount(Connection(parse_redis_url(own_redis_url)).client, [Limit(30, 60_000)], clock=lambda: 100.0) for _ in range(8)]
    for fleet in fleets:
        fleet._spawn = lambda target: None
    early, late, caller = fleets[:2], fleets[2:], "203.0.113.60"
    for fleet in early:
        fleet.admit("warm-up")
        fleet.settle()  # margins 4 and 6: both admit a caller alone under 30 (over 4 x their margin)
    calls = [calls_of(fleet) for fleet in early]
    passed = sum(fleet.admit(caller) is None for fleet in early)
    assert passed == 2 and calls == [[], []]  # admitted alone: Redis does not know them yet
    for fleet in late:
        fleet.admit("warm-up")
        fleet.settle()  # eight processes: a margin of 18, and 30 is under 2 margins: every request is checked in Redis
    passed += sum(late[n % 6].admit(caller) is None for n in range(40))
    for fleet in early:
        fleet.settle()
        fleet.settle()  # the margin of 18 reached them, and what they admitted alone is counted
    passed += sum(late[n % 6].admit(caller) is None for n in range(10))
    assert passed == 30
    assert client.llen(Limit(30, 60_000).key(caller)) == 30


class Replay:
    """One random order of joins, settlements and leaves of several processes, by hand and with the clock standing still."""

    CALLER = "203.0.113.70"

    def __init__(self, redis_url: str, seed: int):
        self.rnd = random.Random(seed)
        self.seed, self.amount, self.passed = seed, self.rnd.choice([30, 50, 100, 200]), 0
        self.fleets = [
            FleetCount(Connection(parse_redis_url(redis_url)).client, [Limit(self.amount, 60_000)], clock=lambda: 100.0)
            for _ in range(self.rnd.choice([2, 4, 8, 12]))
        ]
        for fleet in self.fleets:
            fleet._spawn = lambda target: None  # no settling thread: this order only
            fleet._script = self.on_its_way(fleet, fleet._script)

    def admit(self, fleet: FleetCount) -> None:
        """Send one request of the caller to ``fleet``; fail at once if it passes over the limit."""
        self.passed += fleet.admit(self.CALLER) is None
        assert self.passed <= self.amount, f"seed {self.seed}: {self.passed} of {self.amount} passed"

    def on_its_way(self, fleet: FleetCount, script):
        """Wrap ``fleet``'s script so requests also arrive while a settlement travels to Redis and back."""

        def call(keys, args):
            if args[0] != "settle":
                return script(keys=keys, args=args)
            for _ in range(self.rnd.choice([0, 0, 1, 2])):
                self.admit(fleet)
            answer = script(keys=keys, args=args)
            for _ in range(self.rnd.choice([0, 0, 1, 2])):
                self.admit(fleet)
            return answer

        return call

    def run(self) -> int:
        """Replay the order, then settle everyone and ask until nothing more passes; return how many passed."""
        for _ in range(self.rnd.choice([200, 600])):
            fleet, step = self.rnd.choice(self.fleets), self.rnd.random()
            if step < 0.6:
                self.admit(fleet)
            elif fleet._process and step < 0.95:
                fleet.settle()
            elif fleet._process:
                fleet._leave()
        for _ in range(4):
            for fleet in self.fleets:
                if fleet._process:
                    fleet.settle()
            for n in range(self.amount):
                self.admit(self.fleets[n % len(self.fleets)])
        return self.passed


def test_random_orders_of_joins_settlements_and_leaves_admit_exactly_the_limit(own_redis_url):
    """Never more than the limit at any step, requests arriving while settlements travel too; exactly the limit at the end.

    Before Redis kept each process's margins, seed 6 let 31 of 30 through; with PER_PROCESS = 1, seed 0 fails.
    """
    client = redis.Redis.from_url(own_redis_url)
    for seed in range(40):
        client.flushall()
        replay = Replay(own_redis_url, seed)
        assert replay.run() == replay.amount, f"seed {seed}"
