"""One contract, every store: in-process, fakeredis, and a real redis-server."""

import json
import socket
import time
from dataclasses import replace

import fakeredis
import pytest
import redis

from app.config.redis_url import parse_redis_url
from app.core.errors import StoreUnavailable
from app.core.ice import new_credential
from app.store.memory import MemoryStore
from app.store.redis import RedisStore, _describe, store_key

# One worker runs the tests that share this session fixture (make test runs them in parallel).
pytestmark = pytest.mark.xdist_group("redis-topologies")

TURN = [{"urls": ["turn:t.example.test:3478"], "username": "u", "credential": "c"}]


def credential(issued_at, credential_ttl=24, cache_ttl=12):
    return new_credential(TURN, "cloudflare", issued_at, credential_ttl, cache_ttl)


@pytest.fixture(
    params=[
        "memory",
        "fakeredis",
        *(pytest.param(kind, marks=pytest.mark.integration) for kind in ("redis", "tls-acl", "sentinel", "cluster")),
    ]
)
def store(request):
    """One store of each kind, empty: the contract holds on every topology (as dogpile.cache tests its backends)."""
    if request.param == "memory":
        return MemoryStore()
    if request.param == "fakeredis":
        return RedisStore(fakeredis.FakeRedis())
    if request.param == "redis":
        return RedisStore.from_url(request.getfixturevalue("redis_url"))
    if request.param == "tls-acl":
        server = request.getfixturevalue("tls_redis")
        server.flush()
        return RedisStore.from_target(parse_redis_url(server.url(), ca_file=str(server.ca_file)))
    topology = request.getfixturevalue("sentinel_group" if request.param == "sentinel" else "redis_cluster")
    topology.flush()
    return RedisStore.from_url(topology.url)


def test_empty_store_misses(store):
    snapshot = store.snapshot()
    assert store.get() is None and snapshot.credential is None and snapshot.revoked is None
    assert (snapshot.cooldown, snapshot.failures) == (0, 0)


def test_put_then_get_returns_the_credential(store):
    held = credential(time.time())
    assert store.put(held)
    assert store.get() == held and store.snapshot().credential == held


def test_late_writer_never_replaces_a_newer_credential(store):
    newer, older = credential(time.time()), credential(time.time() - 5)
    assert store.put(newer)
    assert not store.put(older)
    assert store.get() == newer


def test_newer_credential_replaces_an_older_one(store):
    older, newer = credential(time.time() - 5), credential(time.time())
    store.put(older)
    assert store.put(newer)
    assert store.get() == newer


def test_a_shorter_grant_issued_later_replaces_an_older_longer_one(store):
    # Failed before: the record expiring later won, so a lowered TURN_CREDENTIAL_TTL (or a vendor granting less) lost
    # every put until the old record expired, and each lost put sent another refill upstream.
    older_longer, newer_shorter = credential(time.time() - 5, credential_ttl=150), credential(time.time(), credential_ttl=60)
    assert store.put(older_longer)
    assert store.put(newer_shorter)
    assert store.get() == newer_shorter
    assert not store.put(older_longer)  # and the older one never comes back


def test_a_tombstone_wins_over_its_credential_put_back_even_after_a_shorter_grant(store):
    revoked = credential(time.time() - 5, credential_ttl=150)
    store.put(revoked)
    store.revoke(revoked)
    assert not store.put(revoked)  # a worker's copy of the revoked one
    assert store.snapshot().revoked is not None
    replacement = credential(time.time(), credential_ttl=60)
    assert store.put(replacement) and store.get() == replacement
    assert not store.put(revoked)


def test_one_record_holds_the_credential_past_its_window_until_it_expires(store):
    past = credential(time.time() - 13)  # its 12 s window is over, 11 s of validity left
    assert store.put(past)
    assert store.get() == past  # callers decide what a stale credential is good for


def test_a_revoked_credential_is_never_put_back_and_a_newer_one_is(store):
    old = credential(time.time())
    store.put(old)
    store.revoke(old)
    snapshot = store.snapshot()
    assert snapshot.credential is None and snapshot.revoked.username == "u" and snapshot.revoked.expires_at == old.expires_at
    assert not store.put(old)  # a worker's copy of it cannot come back
    assert not store.put(credential(time.time() - 3))
    newer = credential(time.time() + 1)
    assert store.put(newer) and store.get() == newer


def test_revoking_an_older_credential_leaves_a_newer_one(store):
    old, newer = credential(time.time() - 5), credential(time.time())
    store.put(newer)
    store.revoke(old)
    assert store.get() == newer and store.snapshot().revoked is None


def test_lock_is_exclusive_until_released_by_its_owner(store):
    token = store.acquire_lock(10)
    assert token and store.acquire_lock(10) is None
    store.release_lock("someone-else")
    assert store.acquire_lock(10) is None
    store.release_lock(token)
    assert store.acquire_lock(10) is not None


def test_cooldown_counts_failures_until_cleared(store):
    store.start_cooldown(30)
    store.start_cooldown(30)
    snapshot = store.snapshot()
    assert 29 < snapshot.cooldown <= 30 and snapshot.failures == 2
    store.clear_failures()
    assert (store.snapshot().cooldown, store.snapshot().failures) == (0, 0)


def test_named_values_live_for_their_ttl_and_claims_are_exclusive(store):
    store.write("usage", '{"egressBytes": 1}', 60)
    assert store.read("usage") == '{"egressBytes": 1}' and store.read("other") is None
    assert store.claim("usage:ask", 60) and not store.claim("usage:ask", 60)


def test_scopes_have_their_own_record_and_lock_and_share_the_cool_down(store):
    user = store.scoped("user:" + "a1" * 16)
    user.put(credential(time.time()))
    assert store.get() is None and user.get() is not None
    assert store.acquire_lock(10) and user.acquire_lock(10)
    store.start_cooldown(30)
    assert user.snapshot().failures == 1


def test_memory_store_expires_by_its_clock():
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    store.put(credential(1000.0))
    token = store.acquire_lock(10)
    now[0] = 1011.0
    assert store.acquire_lock(10) is not None and token  # the dead holder's lock expired
    now[0] = 1012.0
    assert store.get() is not None  # past its window: still the record
    now[0] = 1024.0
    assert store.get() is None  # expired: gone, as Redis's PX drops it


def test_the_redis_record_expires_with_its_credential(redis_url):
    client = redis.Redis.from_url(redis_url)
    store = RedisStore(client)
    store.put(credential(time.time(), credential_ttl=86400, cache_ttl=82800))
    assert 86390_000 < client.pttl(store_key("credential")) <= 86400_000
    assert client.keys("ice-servers:{shared}:*") == [store_key("credential").encode()]  # one record per scope


def test_redis_lock_has_an_expiry(redis_url):
    client = redis.Redis.from_url(redis_url)
    RedisStore(client).acquire_lock(10)
    assert 9000 < client.pttl(store_key("lock")) <= 10000


@pytest.mark.parametrize("junk", ["not json", '{"iceServers": 1}', '{"source": "cloudflare"}', '{"revoked": "u", "expiresAt": "NaN"}'])
def test_junk_records_are_misses_and_get_replaced(redis_url, junk):
    client = redis.Redis.from_url(redis_url)
    client.set(store_key("credential"), junk)
    store = RedisStore(client)
    assert store.get() is None and store.snapshot().revoked is None
    assert store.put(credential(time.time()))
    assert store.get() is not None


def test_wrong_redis_type_is_a_miss_and_gets_replaced(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.hset(store_key("credential"), "a", "b")
    store = RedisStore(client)
    assert store.get() is None
    assert store.put(credential(time.time()))
    assert store.get() is not None


def test_unreachable_redis_raises_store_unavailable_quickly():
    store = RedisStore.from_url("redis://127.0.0.1:1/0")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="could not connect"):
        store.get()
    # Bounded by the sub-second socket timeouts (one reconnect), not redis-py's default retries.
    assert time.monotonic() - started < 2.5


def test_store_repr_hides_the_url():
    assert "secret-password" not in repr(RedisStore.from_url("redis://:secret-password@127.0.0.1:1/0"))


def test_silent_redis_times_out_within_a_second():
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        store = RedisStore.from_url(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="did not answer within 0.5 s"):
            store.get()
        # One read timeout plus one reconnect-and-retry: about a second, never redis-py's default retries.
        assert time.monotonic() - started < 2.5


def test_a_silent_redis_is_reported_with_the_timeout_in_force_serverless_too():
    # Failed before: the message said 0.5 s whatever the timeout, so a serverless log (1 s per command) misled the reader.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        target = replace(parse_redis_url(f"redis://127.0.0.1:{silent.getsockname()[1]}/0"), cold_connections=True)
        with pytest.raises(StoreUnavailable) as failure:
            RedisStore.from_target(target).get()
        assert str(failure.value) == "Redis did not answer within 1 s"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("error", "timeouts", "expected"),
    [
        ("Timeout connecting to server", (0.5, 0.5), "Redis did not answer within 0.5 s"),
        ("Timeout connecting to server", (2.0, 1.0), "Redis did not answer within 2 s to connect (1 s for the TLS handshake)"),
        ("Timeout reading from connecting.example.test:6379", (2.0, 1.0), "Redis did not answer within 1 s"),
    ],
)
def test_a_timeout_names_the_connects_or_a_commands_limit(error, timeouts, expected):
    assert _describe(redis.TimeoutError(error), timeouts) == expected


def test_a_tombstone_written_before_records_were_ordered_by_issue_still_blocks_its_credential(redis_url):
    store = RedisStore.from_url(redis_url)
    revoked = credential(time.time() - 5, credential_ttl=150)
    legacy = json.dumps({"revoked": "u", "expiresAt": revoked.expires_at})  # what the last release wrote: no issuedAt
    redis.Redis.from_url(redis_url).set(store_key("credential"), legacy, px=60_000)
    assert store.snapshot().revoked.blocks(revoked)
    assert not store.put(revoked)


def test_an_old_tombstone_keeps_out_its_own_credential_only_so_a_lowered_lifetime_is_no_storm(redis_url):
    # An old tombstone compared by expiry would refuse every shorter grant, and each refused put would cost a refill.
    store = RedisStore.from_url(redis_url)
    revoked = credential(time.time() - 5, credential_ttl=150)
    legacy = json.dumps({"revoked": "u", "expiresAt": revoked.expires_at})
    redis.Redis.from_url(redis_url).set(store_key("credential"), legacy, px=150_000)
    other_user = [{"urls": ["turn:t.example.test:3478"], "username": "v", "credential": "c"}]
    shorter = new_credential(other_user, "cloudflare", time.time(), 60, 30)
    assert store.put(shorter) and store.get() == shorter


def test_users_are_admitted_up_to_the_bound_within_a_credential_life(store):
    assert [store.admit_user(3, 3600) for _ in range(5)] == [True, True, True, False, False]
    assert store.scoped("user:someone").admit_user(3, 3600) is False  # one count for the fleet, whatever the scope
