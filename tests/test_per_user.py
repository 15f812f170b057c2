"""A credential per user (ICE_CREDENTIAL_SCOPE=user): the same cache machinery on a user's scope, on a fake clock."""

import time

import fakeredis
import pytest

from app import create_app
from app.access.identity import UserIds
from app.config import ConfigError, load_settings
from app.core.operations import revoke
from app.providers.turn_secret import TurnSecretProvider
from app.store.memory import MemoryStore
from app.store.redis import RedisStore, store_key
from tests.conftest import LocalProvider
from tests.jwt_tools import HS_SECRET, bearer, hs_token

ALICE, BOB = "a1" * 16, "b2" * 16  # opaque ids, as UserIds makes them
USER_ID_SECRET = "test-user-id-secret-0123456789-abcdef"


def test_each_user_gets_a_credential_of_their_own(make_service, provider):
    service = make_service()
    alice, bob = service.answer(ALICE), service.answer(BOB)
    assert alice.ice_servers[1]["username"] != bob.ice_servers[1]["username"]
    assert provider.users == [ALICE, BOB]
    assert service.answer(ALICE) is alice and provider.calls == 2
    assert service.answer().ice_servers[1]["username"] == "user-3"  # the shared scope is apart
    assert provider.users[-1] is None


def test_a_user_credential_has_the_shared_guarantees(make_service, provider, clock):
    service = make_service()
    service.answer(ALICE)
    clock.advance(9.5)  # the last quarter of the window: refreshed ahead (inline here, so this answer has it)
    assert service.answer(ALICE).ice_servers[1]["username"] == "user-2"
    assert provider.calls == 2 and provider.users == [ALICE, ALICE]
    provider.fail(500)
    clock.advance(12)  # past the new window: the upstream fails, the last credential is served while valid
    assert service.answer(ALICE).ice_servers[1]["username"] == "user-2"
    clock.advance(13)
    assert service.answer(ALICE).source == "stun-only"  # never expired


def test_workers_sharing_a_store_call_upstream_once_per_user(make_service, provider, clock):
    store = MemoryStore(clock)
    workers = [make_service(store=store) for _ in range(4)]
    for worker in workers:
        for user in (ALICE, BOB):
            worker.answer(user)
    assert sorted(provider.users) == sorted([ALICE, BOB])


def test_a_process_keeps_a_bounded_number_of_user_caches(make_service, provider):
    service = make_service(max_users=3)
    for index in range(10):
        service.answer(f"{index:032x}")
    assert len(service._users) == 3
    assert list(service._users) == [(f"{index:032x}", False) for index in (7, 8, 9)]


def test_user_entries_in_redis_expire_with_their_credential(make_service, provider, clock):
    client = fakeredis.FakeRedis()
    service = make_service(store=RedisStore(client, clock=clock))
    service.answer(ALICE)
    keys = {key.decode() for key in client.keys("ice-servers:{user:*")}
    assert keys == {store_key("credential", f"user:{ALICE}")}  # one record per scope
    assert all(0 < client.pttl(key) <= 24_000 for key in keys)


def test_upstream_cool_down_is_shared_by_every_user(make_service, provider, clock):
    service = make_service()
    provider.fail(500)
    service.answer(ALICE)
    service.answer(BOB)  # the upstream is cooling down: Bob's request does not call it again
    assert provider.calls == 1


def test_revoking_a_user_replaces_only_that_user(make_service, provider, clock):
    provider.revoked = []
    provider.revoke = provider.revoked.append
    store = MemoryStore(clock)
    store.shared = True  # as Redis: the operator's command reaches it
    service = make_service(store=store)
    service.answer(ALICE)
    bob = service.answer(BOB).ice_servers[1]["username"]
    clock.advance(1)  # the operator acts a moment later
    done = revoke(service, ALICE)
    old, new = done.old, done.new
    assert provider.revoked == [old.username] and old.username == "user-1" and new.username == "user-3"
    assert provider.users[-1] == ALICE
    clock.advance(2.1)
    assert service.answer(ALICE).ice_servers[1]["username"] == "user-3"
    assert service.answer(BOB).ice_servers[1]["username"] == bob


def test_turn_secret_provider_puts_the_opaque_id_in_the_username():
    provider = TurnSecretProvider("test-turn-secret", ("turn:own.example.test:3478",))
    assert provider.mint(1_800_000_600, user=ALICE)[-1]["username"] == f"1800000600:{ALICE}"
    assert provider.mint(1_800_000_600)[-1]["username"] == "1800000600:ice-servers"


def test_opaque_ids_are_stable_keyed_and_never_the_subject():
    subject = "alice@example.test"
    first, again = UserIds("test-api-token-not-a-secret").opaque(subject), UserIds("test-api-token-not-a-secret").opaque(subject)
    assert first == again and len(first) == 32 and int(first, 16) >= 0
    assert subject not in first and "alice" not in first
    assert UserIds("another-secret-value").opaque(subject) != first  # keyed: not a plain hash anyone can compute
    assert UserIds("test-api-token-not-a-secret").opaque("bob@example.test") != first


def test_user_scope_answers_each_verified_user_their_own_credential(make_service, provider):
    environ = {"ICE_ACCESS_MODE": "jwt", "ICE_JWT_SECRET": HS_SECRET, "ICE_CREDENTIAL_SCOPE": "user", "ICE_USER_ID_SECRET": USER_ID_SECRET}
    settings = load_settings({**environ, "ICE_RATE_LIMIT": "0"})
    client = create_app(settings, service=make_service(per_user=True)).test_client()
    alice = client.get("/api/ice-servers", headers=bearer(hs_token(sub="alice@example.test"))).get_json()
    again = client.post("/api/turn-credentials", headers=bearer(hs_token(sub="alice@example.test"))).get_json()
    bob = client.get("/api/ice-servers", headers=bearer(hs_token(sub="bob@example.test"))).get_json()
    assert alice["iceServers"][1]["username"] == again["iceServers"]["username"] != bob["iceServers"][1]["username"]
    expected = UserIds(USER_ID_SECRET).opaque("alice@example.test")
    assert provider.users == [expected, UserIds(USER_ID_SECRET).opaque("bob@example.test")]


def test_user_scope_needs_jwt_mode():
    with pytest.raises(ConfigError, match="ICE_CREDENTIAL_SCOPE=user needs ICE_ACCESS_MODE=jwt"):
        load_settings({"ICE_CREDENTIAL_SCOPE": "user"})
    with pytest.raises(ConfigError, match="ICE_CREDENTIAL_SCOPE must be one of shared, user"):
        load_settings({"ICE_CREDENTIAL_SCOPE": "per-user"})


def test_user_scope_requires_a_user_id_secret_of_its_own():
    # Keyed with the API token, a token rotation would silently give every user a new id.
    base = {"ICE_ACCESS_MODE": "jwt", "ICE_JWT_SECRET": HS_SECRET, "ICE_CREDENTIAL_SCOPE": "user"}
    cloudflare = {"CLOUDFLARE_TURN_TOKEN_ID": "test-key-id", "CLOUDFLARE_API_TOKEN": "test-api-token-not-a-secret"}
    with pytest.raises(ConfigError, match="ICE_USER_ID_SECRET is not set: ICE_CREDENTIAL_SCOPE=user keys each user's opaque id") as refused:
        load_settings({**base, **cloudflare})
    assert "test-api-token-not-a-secret" not in str(refused.value)
    assert load_settings({**base, **cloudflare, "ICE_USER_ID_SECRET": USER_ID_SECRET}).user_id_secret == USER_ID_SECRET
    with pytest.raises(ConfigError, match="ICE_USER_ID_SECRET is shorter than 32 characters"):
        load_settings({**base, "ICE_USER_ID_SECRET": "short"})


def test_local_provider_serves_a_user_at_once_during_the_cool_down(make_service, provider, clock):
    local = LocalProvider()
    store = MemoryStore(clock)
    store.start_cooldown(60)
    answer = make_service(store=store, providers=[provider, local]).answer(ALICE)
    assert answer.source == "turn-secret" and provider.calls == 0 and local.calls == 1
    assert time.time() > 0


def test_past_the_mint_budget_a_new_user_gets_the_shared_credential_then_their_own(make_service, provider, clock):
    # A burst of sign-ups: the fleet mints at most the budget each second, and nobody is left on STUN only.
    budget = {"left": 2}

    def may_mint():
        budget["left"] -= 1
        return budget["left"] >= 0

    service = make_service(per_user=True, mint_budget=may_mint)
    users = [f"{n:032x}" for n in range(5)]
    answers = [service.answer(user) for user in users]
    assert [a.source for a in answers] == ["cloudflare"] * 5
    own = [a.ice_servers[1]["username"] for a in answers]
    assert own[:2] == ["user-1", "user-2"] and set(own[2:]) == {"user-3"}  # three shared one (the shared scope's)
    assert provider.users == [users[0], users[1], None]  # the shared credential has no customIdentifier
    budget["left"] = 3  # the next second
    clock.advance(1.0)
    assert [service.answer(user).ice_servers[1]["username"] for user in users[2:]] == ["user-4", "user-5", "user-6"]
    assert service.answer(users[0]).ice_servers[1]["username"] == "user-1"  # a user's own is kept, never re-minted


def test_a_user_whose_credential_cannot_be_minted_gets_the_shared_one_not_stun_only(make_service, provider, clock):
    # docs/access.md: while Cloudflare refuses or cools down, a user without a credential of their own gets the shared one.
    service = make_service()
    shared = service.answer().ice_servers[1]["username"]
    provider.fail(429, retry_after=30)
    for _ in range(3):
        answer = service.answer(BOB)
        assert answer.source == "cloudflare" and answer.ice_servers[1]["username"] == shared
    assert provider.calls == 2 and provider.users == [None, BOB]  # Bob's mint was asked once, refused; then the cool-down
    assert service.credential(BOB).username == shared


def test_a_deferred_user_is_not_asked_for_again_within_the_second(make_service, provider, clock):
    # Each ask of the budget costs the store a lock, a snapshot and a script call: a deferred user holds the decision a second.
    asked = []

    def may_mint():
        asked.append(clock())
        return False

    service = make_service(per_user=True, mint_budget=may_mint)
    for _ in range(20):
        assert service.answer(BOB).source == "cloudflare"
    assert len(asked) == 1
    clock.advance(1.0)
    service.answer(BOB)
    assert len(asked) == 2


def test_past_the_mint_budget_a_user_with_a_credential_still_valid_keeps_their_own(make_service, provider, clock):
    budget = {"open": True}
    service = make_service(per_user=True, mint_budget=lambda: budget["open"])
    own = service.answer(ALICE).ice_servers[1]["username"]
    budget["open"] = False
    clock.advance(12)  # past its window, still valid: a refresh would need the budget
    answer = service.answer(ALICE)
    assert answer.source == "cloudflare" and answer.ice_servers[1]["username"] == own


@pytest.mark.parametrize("store_kind", ["memory", "redis-contract"])
def test_past_the_bound_of_user_records_a_new_user_gets_the_shared_credential(make_service, provider, clock, store_kind):
    # Issue 31: per-user records must not fill the store. Users admitted within one credential life count; a user who
    # has a record refreshes it without counting.
    store = MemoryStore(clock) if store_kind == "memory" else RedisStore(fakeredis.FakeRedis(), clock=clock)
    service = make_service(store=store, max_user_records=2)
    first, second = service.answer(ALICE), service.answer(BOB)
    third = service.answer("c3" * 16)
    shared = service.answer()
    assert third.ice_servers[1]["username"] == shared.ice_servers[1]["username"]  # the shared credential
    assert provider.users[:2] == [ALICE, BOB] and "c3" * 16 not in provider.users
    # Refreshes count too (every live record was minted within its life): past the bound Alice keeps hers until it
    # expires, then gets the shared one; once the first mints are a credential's life old, the bound frees up.
    clock.advance(9.5)
    assert service.answer(ALICE).ice_servers[1]["username"] == first.ice_servers[1]["username"]
    assert provider.users.count(ALICE) == 1
    clock.advance(26 + (120 if store_kind != "memory" else 0))  # Redis counts in buckets of at least a minute
    assert service.answer(ALICE).ice_servers[1]["username"] != first.ice_servers[1]["username"]
    assert provider.users.count(ALICE) == 2 and second.ice_servers[1]["username"] != first.ice_servers[1]["username"]


def test_the_bound_frees_up_as_records_expire(make_service, provider, clock):
    service = make_service(max_user_records=1)
    service.answer(ALICE)
    service.answer(BOB)
    assert BOB not in provider.users
    clock.advance(25)  # past a credential's life (24 s): Alice's record is gone, and her admission no longer counts
    service.answer(BOB)
    assert BOB in provider.users
