"""The rate limit is GCRA: exact for sequential requests, never more for concurrent ones, one round trip, the same in memory.

On a fake clock in memory, on a real redis-server (its TIME, one script call per request counted with
INFO commandstats), and against fakeredis for the Lua itself.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from app.config.rates import Rate, nginx_twin_problem, parse_rates
from app.config.redis_url import parse_redis_url
from app.limits import gcra, rate_limit
from app.limits.gcra import MemoryLimit, step
from app.limits.rate_limit import RateLimit
from app.limits.shared import SharedLimit, caller_key
from app.store.connect import Connection
from tests.servers import RedisServer


def rates(text: str) -> tuple[Rate, ...]:
    return parse_rates(text)


# -- the algorithm -------------------------------------------------------------------------------


def test_from_idle_exactly_the_limit_passes_then_one_every_interval():
    limit = MemoryLimit(rates("5 per minute"))  # one every 12 s
    assert [limit.check("a", 0)[0] for _ in range(6)] == [None] * 5 + [0]
    refused, wait_ms = limit.check("a", 0)
    assert refused == 0 and wait_ms == pytest.approx(12_000)  # Retry-After comes from the algorithm
    assert limit.check("a", 11_999)[0] == 0 and limit.check("a", 12_000)[0] is None and limit.check("a", 12_001)[0] == 0
    assert limit.check("b", 0)[0] is None  # another caller has its own


def test_a_refusal_moves_nothing():
    limit = MemoryLimit(rates("2 per second"))
    assert [limit.check("a", 0)[0] for _ in range(2)] == [None, None]
    for _ in range(100):  # a flood of refusals does not push the next admission further away
        assert limit.check("a", 100)[0] == 0
    assert limit.check("a", 500)[0] is None


def test_several_limits_pass_only_together_and_the_tightest_refuses():
    limit = MemoryLimit(rates("3 per second; 4 per minute"))
    assert [limit.check("a", 0)[0] for _ in range(4)] == [None, None, None, 0]  # the per-second one first
    assert limit.check("a", 1000)[0] is None  # the second lets one more through...
    refused, wait_ms = limit.check("a", 2000)
    assert refused == 1 and wait_ms == pytest.approx(4 * 15_000 - 60_000 + 15_000 - 2000 + 0, abs=1)  # ...then the minute's


def test_with_several_limits_retry_after_is_the_longest_wait():
    # Over both at once: the per-second limit would let it by in 0.5 s, the hour's in 30 minutes. Retry-After says 30 minutes.
    limit = MemoryLimit(rates("2 per second; 2 per hour"))
    assert [limit.check("a", 0)[0] for _ in range(2)] == [None, None]
    assert limit.check("a", 0) == (1, pytest.approx(1_800_000))


def test_memory_holds_at_most_memory_callers_and_forgets_the_oldest_first(monkeypatch):
    monkeypatch.setattr(gcra, "MEMORY_CALLERS", 3)
    limit = MemoryLimit(rates("1 per day"))
    for index in range(5):
        assert limit.check(f"caller-{index}", 0)[0] is None
    assert list(limit._tats) == ["caller-2", "caller-3", "caller-4"]


def test_quiet_callers_are_forgotten_in_memory():
    limit = MemoryLimit(rates("10 per second"))
    limit.check("quiet", 0)
    limit.check("busy", 5000)
    limit.check("busy", 5000)
    assert "quiet" not in limit._tats and "busy" in limit._tats  # one float per limit for a caller still due


def test_the_step_is_pure_and_new_callers_start_full():
    assert step(None, 1000.0, rates("1 per second")) == (None, 0.0, [2000.0])
    assert step([2000.0], 1000.0, rates("1 per second"))[0] == 0
    assert step([500.0], 1000.0, rates("1 per second; 10 per minute"))[0] is None  # a changed ICE_RATE_LIMIT: start afresh


# -- the syntax ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("600 per minute", [(600, 60)]),
        ("10/second", [(10, 1)]),
        ("100 per 5 minutes", [(100, 300)]),
        ("5 Per Hour; 100 per day", [(5, 3600), (100, 86_400)]),
        ("1/month, 2/year | 3 per 2 days", [(1, 30 * 86_400), (2, 360 * 86_400), (3, 2 * 86_400)]),
        ("10per minute", [(10, 60)]),
    ],
)
def test_every_syntax_the_limits_library_took_is_taken(text, expected):
    assert [(rate.amount, rate.period) for rate in parse_rates(text)] == expected


@pytest.mark.parametrize("text", ["lots", "0 per minute", "10 per 0 seconds", "10 per fortnight", "10 per minute;", "\u0661 per minute"])
def test_what_is_not_a_rate_is_refused(text):
    with pytest.raises(ValueError):
        parse_rates(text)


# -- Redis ------------------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path):
    """Run a redis-server of this test's own: its command counts are this test's alone."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


def test_in_redis_exactly_the_limit_passes_with_one_script_call_per_request(own_redis):
    client = own_redis.client()
    limit = RateLimit(rates("5 per minute"), redis.Redis(port=own_redis.port))
    limit.hit("warm-up")  # redis-py loads the script on its first call (EVALSHA, NOSCRIPT, EVAL)
    before = script_calls(client)
    answers = [limit.hit("203.0.113.1") for _ in range(8)]
    assert [a is None for a in answers] == [True] * 5 + [False] * 3
    # One round trip each up to the first refusal; the next refusals are remembered (below); nothing in the background.
    assert script_calls(client) - before == 6
    assert answers[-1].headers["Retry-After"] == "12" and answers[-1].body == b'{"error": "too many requests", "status": 429}'


def test_a_refused_caller_is_refused_again_without_redis_until_it_could_pass(own_redis):
    # A refusal moves nothing in GCRA, so until the wait Redis named has passed, Redis would refuse again: a flood
    # costs Redis one call per wait, not one per request, and the caller passes as soon as Redis would let it.
    client = own_redis.client()
    limit = RateLimit(rates("2 per second"), redis.Redis(port=own_redis.port))
    limit.hit("warm-up")
    assert limit.hit("192.0.2.7") is None and limit.hit("192.0.2.7") is None
    before = script_calls(client)
    refusals = 0
    while (answer := limit.hit("192.0.2.7")) is not None:  # flood until it passes again, about 0.5 s on
        refusals += 1
        assert answer.headers["Retry-After"] == "1"
    assert refusals > 100
    assert script_calls(client) - before <= 4  # the first refusal, the pass, and at most two at the boundary
    assert limit.hit("192.0.2.8") is None  # other callers are not touched


def test_a_worker_remembers_at_most_refused_memory_refusals_and_drops_the_oldest(own_redis, monkeypatch):
    monkeypatch.setattr(rate_limit, "REFUSED_MEMORY", 3)
    limit = RateLimit(rates("1 per hour"), redis.Redis(port=own_redis.port))
    for index in range(5):
        assert limit.hit(f"198.51.100.{index}") is None and limit.hit(f"198.51.100.{index}") is not None
    assert list(limit._refused) == ["198.51.100.2", "198.51.100.3", "198.51.100.4"]
    client = own_redis.client()
    before = script_calls(client)
    assert limit.hit("198.51.100.0") is not None and script_calls(client) == before + 1  # forgotten: Redis asked, still refused
    assert limit.hit("198.51.100.4") is not None and script_calls(client) == before + 1  # remembered


def test_concurrent_requests_of_one_caller_never_pass_more_than_the_limit(own_redis):
    # Four workers' limits, eight threads each, one caller: exactly 100 pass, however they interleave.
    limits = [RateLimit(rates("100 per hour"), redis.Redis(port=own_redis.port)) for _ in range(4)]
    barrier = threading.Barrier(32)

    def flood(index):
        barrier.wait()
        return sum(limits[index % 4].hit("198.51.100.9") is None for _ in range(25))

    with ThreadPoolExecutor(max_workers=32) as pool:
        passed = sum(pool.map(flood, range(32)))
    assert passed == 100


def test_each_caller_is_one_key_under_its_own_hash_tag_that_expires(own_redis):
    client = own_redis.client()
    limit = RateLimit(rates("10 per second; 600 per minute"), redis.Redis(port=own_redis.port))
    for caller in ("203.0.113.1", "2001:db8::/64", "user:0123abcd"):
        limit.hit(caller)
    keys = client.keys("ice-servers:rl:*")
    assert len(keys) == 3 and not [key for key in keys if b"203.0.113" in key or b"user:" in key]  # digests, never in clear
    tags = {key.split(b"{")[1].split(b"}")[0] for key in keys}
    assert len(tags) == 3  # a cluster spreads them over its slots
    assert all(0 < client.pttl(key) <= 1000 for key in keys)  # gone once the caller is back at full burst
    assert client.get(keys[0]).count(b",") == 1  # one number per limit


def test_while_redis_fails_each_worker_counts_in_memory_and_says_so_once(caplog):
    limit = RateLimit(rates("3 per minute"), Connection(parse_redis_url("redis://127.0.0.1:1/0")).client)  # the app's client
    assert [limit.hit("a") is None for _ in range(5)] == [True] * 3 + [False] * 2
    assert caplog.text.count("Shared cache unavailable (the rate limit's script: ConnectionError)") == 1
    assert "counting rate limits in memory" in caplog.text


def test_the_script_runs_the_same_step_as_memory(own_redis):
    # Same answers, request by request, for a mixed flood of two callers (Redis's clock vs a still clock: far under a second).
    shared = SharedLimit(redis.Redis(port=own_redis.port), rates("4 per minute; 2 per second"))
    memory = MemoryLimit(rates("4 per minute; 2 per second"))
    for caller in ["a", "b", "a", "a", "b", "a", "b", "b", "b", "a"]:
        assert shared.check(caller)[0] == memory.check(caller, 0)[0]


def test_a_malformed_key_value_is_a_new_caller_not_an_error(own_redis):
    client = own_redis.client()
    limit = SharedLimit(redis.Redis(port=own_redis.port), rates("2 per minute"))
    limit.check("x")
    (key,) = client.keys(caller_key("x") + "*")
    client.set(key, "junk,\u00b2")
    assert limit.check("x")[0] is None


def test_in_redis_retry_after_is_the_longest_wait_too(own_redis):
    limit = SharedLimit(redis.Redis(port=own_redis.port), rates("2 per second; 2 per hour"))
    assert [limit.check("a")[0] for _ in range(2)] == [None, None]
    refused, wait_ms = limit.check("a")
    assert refused == 1 and 1_799_000 < wait_ms <= 1_800_000


def test_a_new_caller_of_one_per_period_is_always_admitted():
    # Failed before: (tat + T - period) - now rounded to a hair above zero on a monotonic clock in ms, and about one new
    # caller in ten of "1 per hour" was refused with Retry-After: 1.
    for _ in range(2000):
        assert RateLimit(rates("1 per hour"), None).hit("203.0.113.9") is None


def test_a_new_caller_of_one_per_period_is_always_admitted_in_redis(own_redis):
    limit = SharedLimit(redis.Redis(port=own_redis.port), rates("1 per hour"))
    assert all(limit.check(f"caller-{index}")[0] is None for index in range(500))


SHIPPED = ["zone=ice_servers_per_address burst=599 nodelay"]  # both limit_req lines of the shipped site, as deploy.sh passes them


@pytest.mark.unit
@pytest.mark.parametrize(
    ("rate_limit", "nginx_rate", "limit_lines", "expected"),
    [
        ("600 per minute", "600r/m", SHIPPED, None),  # the shipped site and the default
        ("600/minute", "10r/s", ["burst=599 zone=ice_servers_per_address nodelay"], None),
        ("10 per second", "600r/m", ["zone=ice_servers_per_address burst=9 nodelay"], None),
        ("100 per 5 minutes", "20r/m", ["zone=ice_servers_per_address burst=99 nodelay"], None),  # nginx's nearest
        ("1 per second", "1r/s", ["zone=ice_servers_per_address nodelay"], None),  # burst=0 is refused by nginx: none
        ("1 per second", "600r/m", SHIPPED, "means rate=1r/s (no burst=) nodelay"),
        ("100 per minute", "600r/m", SHIPPED, "means rate=100r/m burst=99 nodelay"),  # lowered in .env only
        ("600 per minute", "600r/m", ["zone=ice_servers_per_address burst=10 nodelay"], "means rate=10r/s burst=599 nodelay"),
        ("600 per minute", "60r/m", SHIPPED, "means rate=10r/s burst=599 nodelay"),
        ("600 per minute", "600r/m", ["zone=ice_servers_per_address burst=599"], "means rate=10r/s burst=599 nodelay"),  # queues
        ("600 per minute", "600r/m", [*SHIPPED, "zone=ice_servers_per_address burst=5 nodelay"], "lines for its zone differ"),
        ("600 per minute", "600r/m", [], "lines for its zone differ (or there is none)"),
        ("600 per minute", "600r/m", ["zone=ice_servers_per_address burst=x nodelay"], "has no whole burst="),
        ("600 per minute", "600r/m", ["zone=ice_servers_per_address burst=٥٩٩ nodelay"], "has no whole burst="),  # not ASCII
        ("10/second; 100 per 5 minutes", "600r/m", SHIPPED, "has no nginx twin"),
        ("7 per hour", "600r/m", SHIPPED, "has no nginx twin"),
        (None, "600r/m", SHIPPED, "remove its limit_req lines too"),
        ("600 per minute", "600r/h", SHIPPED, "is not like 600r/m"),
    ],
)
def test_the_nginx_sites_limit_is_compared_with_ice_rate_limit(rate_limit, nginx_rate, limit_lines, expected):
    problem = nginx_twin_problem(rate_limit, nginx_rate, limit_lines)
    assert problem is None if expected is None else expected in problem, problem
