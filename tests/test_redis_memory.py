"""What the shared cache costs in Redis memory, measured on a real redis-server through the service's own writes.

docs/fleet-and-redis.md sizes maxmemory from these figures: a rate-limited caller is one key for as
long as it is not back at full burst, a user one record for as long as their credential lives.
"""

import time

import pytest

from app.config.rates import parse_rates
from app.core.ice import new_credential
from app.limits.shared import SharedLimit
from app.store.redis import RedisStore
from tests.servers import RedisServer

CALLERS, USERS = 20_000, 2_000
# What docs/fleet-and-redis.md states; the test fails if a change makes either grow.
MAX_BYTES_PER_CALLER, MAX_BYTES_PER_USER = 150, 800


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def memory_of(client, pattern: str) -> tuple[int, int]:
    """Return (keys, bytes) of the keys matching ``pattern``: MEMORY USAGE counts each key, its value and their overhead."""
    keys = list(client.scan_iter(pattern, count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return len(keys), sum(pipe.execute())


def test_memory_per_rate_limited_caller_and_per_user_credential(own_redis):
    client = own_redis.client()
    # A key's size does not depend on its rate; a slow one keeps them long enough to be measured (at 600 per
    # minute a caller's key lives 0.1 s per request it made, and is gone once the caller is back at full burst).
    limit = SharedLimit(client, parse_rates("10 per hour"))
    pipe = client.pipeline(transaction=False)
    for n in range(CALLERS):  # the callers the rate limit holds: an IPv4 address each, one GCRA key
        limit._script(keys=[f"ice-servers:rl:{{{n:020x}}}" + limit._suffix], args=limit._args, client=pipe)
    pipe.execute()
    callers, caller_bytes = memory_of(client, "ice-servers:rl:*")

    store = RedisStore(client)
    # A Cloudflare answer as the service stores it: five URLs after the policy's trim, a user's credential.
    servers = [
        {"urls": ["stun:stun.cloudflare.com:3478"]},
        {
            "urls": [
                "turn:turn.cloudflare.com:3478?transport=udp",
                "turn:turn.cloudflare.com:80?transport=tcp",
                "turns:turn.cloudflare.com:443?transport=tcp",
                "turn:turn.cloudflare.com:3478?transport=tcp",
            ],
            "username": "g0" * 32,
            "credential": "c1" * 22,
        },
    ]
    for n in range(USERS):
        store.scoped(f"user:{n:032x}").put(new_credential(servers, "cloudflare", time.time(), 86400, 82800))
    users, user_bytes = memory_of(client, "ice-servers:{user:*")
    per_caller, per_user = caller_bytes / callers, user_bytes / users

    print(f"Redis memory: {per_caller:.0f} bytes per rate-limited caller, {per_user:.0f} bytes per user credential")
    assert 0 < per_caller <= MAX_BYTES_PER_CALLER
    assert 0 < per_user <= MAX_BYTES_PER_USER
    assert (callers, users) == (CALLERS, USERS)
