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
