"""Revocations stay revoked through Redis blips: a worker's own store never hands a revoked credential out again."""

import pytest

from app.core.cache import LOCAL_STALENESS
from app.core.store_policy import SHARED_RETRY_AFTER
from tests.test_service import SwitchableStore

pytestmark = pytest.mark.unit


def username(answer):
    return next(server["username"] for server in answer.ice_servers if "username" in server)


def test_a_worker_that_served_its_copy_during_a_blip_never_serves_the_revoked_credential_at_a_later_blip(make_service, provider, clock):
    store = SwitchableStore(clock)
    worker = make_service(store=store)
    assert username(worker.answer()) == "user-1"
    # A first blip: the worker serves its own copy, and puts it into its own store.
    store.down = True
    clock.advance(LOCAL_STALENESS + 0.1)
    assert username(worker.answer()) == "user-1"
    # Redis back; the operator revokes user-1 (a tombstone in Redis), with no new credential to be had.
    store.down = False
    provider.fail(500)
    clock.advance(SHARED_RETRY_AFTER + 0.1)
    revoked = store.snapshot().credential
    store.revoke(revoked)
    clock.advance(LOCAL_STALENESS + 0.1)
    assert worker.answer().source == "stun-only"  # the worker saw the tombstone
    # A second blip: the worker's own store must not hand user-1 out again.
    store.down = True
    for _ in range(6):
        clock.advance(LOCAL_STALENESS + 0.1)
        answer = worker.answer()
        assert answer.source == "stun-only" and not any("username" in server for server in answer.ice_servers)


def test_a_revocation_whose_replacement_succeeded_leaves_only_the_replacement_in_a_workers_own_store(make_service, provider, clock):
    # From a review: the revoke command replaces the tombstone with a new credential at once, so no worker ever saw the
    # tombstone; a worker that had lost its copy (a per-user cache evicted) served the revoked one from its own store at
    # the next blip. What Redis holds now goes into each worker's own store when it reads it.
    from app.core.operations import revoke

    store = SwitchableStore(clock)
    worker = make_service(store=store)
    assert username(worker.answer()) == "user-1"
    store.down = True
    clock.advance(LOCAL_STALENESS + 0.1)
    worker.answer()  # user-1 goes into the worker's own store
    store.down = False
    clock.advance(SHARED_RETRY_AFTER + 0.1)
    operator = make_service(store=store)
    revoked = store.snapshot().credential
    operator.providers[0].revoke = lambda name: None  # Cloudflare's revocation, answered
    revoke(operator)
    assert store.snapshot().credential.issued_at > revoked.issued_at  # the replacement (user-2) is the record
    clock.advance(LOCAL_STALENESS + 0.1)
    assert username(worker.answer()) == "user-2"
    worker.shared_cache.copy = None  # the copy lost, as an evicted per-user cache loses it
    store.down = True
    clock.advance(SHARED_RETRY_AFTER + LOCAL_STALENESS + 0.2)
    assert username(worker.answer()) == "user-2"
