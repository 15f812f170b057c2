"""The rate limit check: exact counts, one round trip per request, a refusal no dearer than an admission, memory while Redis fails."""

import json
import logging

import redis

from app.rate_limit import RateLimit
from app.redis_connect import limiter_storage
from app.redis_url import parse_redis_url


def script_calls(client):
    """Return the server's counts of script calls and of the list writes an admission makes."""
    stats = client.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval", "lpush", "lindex")}


def test_counts_exactly_with_one_script_call_per_request_and_a_cheap_refusal(redis_url):
    limit = RateLimit("5 per minute", *limiter_storage(parse_redis_url(redis_url)), message="too many requests from this address")
    client = redis.Redis.from_url(redis_url)
    assert limit.hit("203.0.113.1") is None  # loads the script
    before = script_calls(client)
    admitted = [limit.hit("203.0.113.1") for _ in range(4)]
    middle = script_calls(client)
    refused = [limit.hit("203.0.113.1") for _ in range(4)]
    after = script_calls(client)
    assert admitted == [None] * 4 and all(answer is not None for answer in refused)
    assert middle["evalsha"] - before["evalsha"] == 4 and after["evalsha"] - middle["evalsha"] == 4  # one round trip each
    assert middle["lpush"] - before["lpush"] == 4 and after["lpush"] == middle["lpush"]  # a refusal writes nothing
    body, headers = refused[0]
    assert json.loads(body) == {"error": "too many requests from this address", "status": 429}
    assert headers["Retry-After"] == "60"
    assert limit.hit("203.0.113.2") is None  # another caller has its own count


def test_without_redis_each_worker_counts_in_memory_and_says_so_once(caplog):
    limit = RateLimit("3 per minute", *limiter_storage(parse_redis_url("redis://127.0.0.1:1/0")))
    with caplog.at_level(logging.WARNING, logger="ice_servers"):
        answers = [limit.hit("203.0.113.9") for _ in range(5)]
    assert answers[:3] == [None] * 3 and answers[3] is not None and answers[4] is not None
    assert caplog.text.count("Rate limit storage unavailable") == 1


def test_several_limits_are_all_counted():
    limit = RateLimit("2 per second; 3 per minute")
    assert [limit.hit("a") is None for _ in range(3)] == [True, True, False]
