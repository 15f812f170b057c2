"""IceService: what to hand a caller now: a TURN credential from the right cache, or the fallback.

Each credential scope (the shared one, or one per verified user) is a ``CredentialCache``; this
class picks the cache, turns its credential into an ``Answer`` (reused for the rest of its second,
so warm requests neither build nor encode JSON), and falls back to ``TURN_SERVERS``, then STUN
only, when no valid credential can be had. Per-user caches live in a bounded map: a process holds
at most ``MAX_USERS`` of them, the least recently asked for go first.

Past the monthly egress ceiling (an ``EgressGuard``), callers are answered from "capped" scopes
whose provider chain leaves Cloudflare out: the Cloudflare credential stays cached, unserved and
unrefreshed, and comes back at once when the reading drops under the limit, while what the next
provider minted meanwhile is left behind.

Nothing here knows Flask. Time, sleeping, randomness and thread spawning are injectable.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from app.core.cache import CredentialCache, DegradedLog
from app.core.errors import MintDeferred, StoreUnavailable
from app.core.ice import Credential, answer_body, legacy_body
from app.core.ports import NullRecorder, Provider, Recorder
from app.core.store_policy import StorePolicy
from app.core.urls import UrlPolicy

DEGRADED_TTL = 60  # seconds a caller without a TURN credential should wait before asking again
MAX_USERS = 10_000  # per-user caches one process keeps in memory (the shared cache holds them all)
READINESS_REUSE = 1.0  # seconds a /readyz result is reused: probes from many balancers cost one check a second
READY_ON = "upstream"  # the readiness check that decides: TURN can be handed out (a failing Redis is only reported)
CLOUDFLARE = "cloudflare"  # the source the egress ceiling caps


# Every answer: a credential is a secret that changes (refreshed, revoked, one per user), so no HTTP
# cache may keep one; clients hold it in memory for its ttl.
HEADERS = {"Cache-Control": "no-store"}


@dataclass(frozen=True)
class Answer:
    """What to send a caller: ICE servers, their source and life span.

    The serialized bodies are computed once per Answer; the service reuses an Answer for the rest
    of its second, so warm requests neither build nor encode JSON.
    """

    ice_servers: tuple[dict, ...]
    source: str
    expires_at: float
    now: float

    def body(self) -> dict:
        """Return the ``GET /api/ice-servers`` body."""
        return answer_body(self.ice_servers, self.source, self.expires_at, self.now)

    def legacy_body(self) -> dict:
        """Return the single-object body of ``POST /api/turn-credentials``."""
        return legacy_body(self.ice_servers)

    @cached_property
    def json(self) -> bytes:
        """Return the ``GET /api/ice-servers`` body, encoded."""
        return _encode(self.body())

    @cached_property
    def legacy_json(self) -> bytes:
        """Return the ``POST /api/turn-credentials`` body, encoded."""
        return _encode(self.legacy_body())

    @property
    def headers(self) -> dict[str, str]:
        """Return the response headers besides Content-Type: never stored by any cache."""
        return HEADERS


class IceService:
    """Hand out ICE servers: the shared credential, or each user's own, refilled once per window fleet-wide."""

    def __init__(
        self,
        store,
        providers: Sequence[Provider],
        credential_ttl: int,
        cache_ttl: int,
        turn_servers: Sequence[dict] = (),
        stun_urls: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        spawn: Callable[[Callable[[], None]], None] | None = None,
        per_user: bool = False,
        max_users: int = MAX_USERS,
        policy: StorePolicy | None = None,
        egress=None,
        url_policy: UrlPolicy | None = None,
        recorder: Recorder | None = None,
        mint_budget: Callable[[], bool] | None = None,
        max_user_records: int | None = None,
    ):
        """Wire the store and providers; ``per_user``: callers get their own credentials (user scope).

        ``egress`` (app/spend/ceiling.py's EgressGuard: ``over()``, ``reading()``, ``limit_bytes``),
        when set, caps Cloudflare; ``policy`` is then the one the guard uses too. ``recorder``
        counts what happens (the web layer's is Prometheus). ``mint_budget`` says whether a user's
        own credential may be minted now (the fleet's budget, ICE_USER_MINT_RATE); when it may not,
        that user gets the shared credential meanwhile.
        """
        self.store = store
        self.sleep = sleep  # operator actions wait with it (revoke-turn waits for every worker to move on)
        self.per_user = per_user
        self.recorder = recorder or NullRecorder()
        self.policy = policy or StorePolicy(store, clock, self.recorder)
        self.egress = egress
        self.providers = tuple(providers)
        capped_providers = tuple(p for p in self.providers if p.source != CLOUDFLARE)
        # The URL policy is applied where an answer is built: to every provider's servers, to those
        # cached before a change of the policy, and to the fallback.
        self.url_policy = url_policy or UrlPolicy()
        self.turn_servers = self.url_policy.apply(tuple(turn_servers)) if turn_servers else ()
        self.stun_servers = self.url_policy.apply(tuple({"urls": [url]} for url in stun_urls)) if stun_urls else ()
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._degraded = DegradedLog()
        self._new_cache = lambda user, capped: CredentialCache(
            self.policy,
            capped_providers if capped else self.providers,
            credential_ttl,
            cache_ttl,
            user,
            clock,
            sleep,
            jitter,
            spawn,
            self._degraded,
            scope=_scope(user, capped),
            recorder=self.recorder,
            budget=mint_budget if user is not None else None,
            max_user_records=max_user_records if user is not None else None,
        )
        self.shared_cache = self._new_cache(None, False)
        self.capped_cache = self._new_cache(None, True) if egress is not None else None
        self._users: OrderedDict[tuple[str, bool], CredentialCache] = OrderedDict()
        self._users_mutex = threading.Lock()
        self._max_users = max_users
        self._readiness: tuple[float, bool, dict[str, bool], str] | None = None  # (reuse until, ready, checks, topology)

    def cache(self, user: str | None = None, capped: bool = False) -> CredentialCache:
        """Return the cache of ``user`` (an opaque identifier), or the shared one; ``capped``: without Cloudflare."""
        if user is None:
            return self.capped_cache if capped and self.capped_cache is not None else self.shared_cache
        key = (user, capped)
        with self._users_mutex:
            cache = self._users.get(key)
            if cache is None:
                cache = self._users[key] = self._new_cache(user, capped)
                if len(self._users) > self._max_users:
                    self._users.popitem(last=False)
            else:
                self._users.move_to_end(key)
            return cache

    def answer(self, user: str | None = None) -> Answer:
        """Return what to send a caller now: a TURN credential if one can be had, else the fallback.

        A user whose own credential cannot be had (the fleet's mint budget is spent this second, or
        Cloudflare refuses or cools down) gets the shared credential, and a second later this process asks for
        their own again.
        """
        cache = self.cache(user, capped=self.over_limit())
        now = self._clock()
        copy = cache.trusted(now)
        if copy is not None and copy.answer is not None and copy.answer_key == _answer_key(copy.credential, now):
            # The warm path: the same decision and the same whole seconds of ttl, so the body is exact.
            self.recorder.answered(copy.answer.source)
            return copy.answer
        try:
            credential = cache.credential()
        except MintDeferred:
            self.recorder.cache_event("deferred")
            return self.answer()
        now = self._clock()
        if credential is not None and credential.is_valid(now):
            answer = Answer(self.url_policy.apply(credential.ice_servers), credential.source, credential.expires_at, now)
        elif user is not None:
            self.recorder.cache_event("deferred")
            return self.answer()
        else:
            credential, answer = None, self._fallback(now)
        if cache.copy is not None and cache.copy.credential is credential:
            cache.copy.answer, cache.copy.answer_key = answer, _answer_key(credential, now)
        self.recorder.answered(answer.source)
        return answer

    def credential(self, user: str | None = None) -> Credential | None:
        """Return a valid credential of ``user`` (or the shared one), refilling if need be; None when none can be had."""
        try:
            credential = self.cache(user, capped=self.over_limit()).credential()
        except MintDeferred:
            credential = None
        if credential is None and user is not None:
            return self.cache(None, capped=self.over_limit()).credential()
        return credential

    def over_limit(self) -> bool:
        """Tell whether the month's TURN egress is past ICE_EGRESS_LIMIT_GB (never without a guard)."""
        return self.egress is not None and self.egress.over()

    def readiness(self) -> tuple[bool, dict[str, bool], str]:
        """Return whether TURN can be handed out, the checks and the topology, reused for READINESS_REUSE seconds.

        Ready: the ``upstream`` check passes, or static TURN_SERVERS serve while it fails (named in the checks all the same).
        """
        now = self._clock()
        held = self._readiness
        if held is not None and now < held[0]:
            return held[1], held[2], held[3]
        checks, topology = self._check_readiness(), self.topology()
        ready = checks[READY_ON] or bool(self.turn_servers)
        self._readiness = (now + READINESS_REUSE, ready, checks, topology)
        return ready, checks, topology

    def _check_readiness(self) -> dict[str, bool]:
        """Check that the shared cache answers, and that a provider's TURN can be handed out (``upstream``).

        The upstream passes while a valid credential is held or can be had (with Redis failing too:
        this process's own copy serves). With per-user
        credentials there is no one credential to hold: a provider configured and no failure run
        under way (or a local provider, which always mints). A failing Redis alone is reported, not
        fatal: it fails for every instance at once, and taking them all out of service would turn
        a dependency the service rides out into an outage.
        """
        try:
            self.policy.shared.ping()
            snapshot, store_answers = self.policy.shared.snapshot(), True
        except StoreUnavailable:
            snapshot, store_answers = None, False
        if self.over_limit():  # a policy, not an outage: the next provider or the fallback serves
            return {"redis": store_answers, "upstream": True}
        if not self.providers:  # nothing to ask: TURN_SERVERS are the TURN it hands out, or there is none (STUN only)
            return {"redis": store_answers, "upstream": bool(self.turn_servers)}
        if not self.per_user:
            return {"redis": store_answers, "upstream": self.credential() is not None}
        local = any(not provider.remote for provider in self.providers)
        upstream_fine = snapshot is None or not (snapshot.failures or snapshot.cooldown)
        return {"redis": store_answers, "upstream": bool(self.providers) and (local or upstream_fine)}

    def fallback_source(self) -> str:
        """Name what callers get while the first provider has no credential: the next (local) provider, or the fallback."""
        local = next((provider.label for provider in self.providers if not provider.remote), None)
        return local or ("static TURN_SERVERS" if self.turn_servers else "STUN only")

    def topology(self) -> str:
        """Name the shared cache's topology and state, for /readyz and ice-status."""
        return self.policy.shared.describe()

    def _fallback(self, now: float) -> Answer:
        """Answer without a TURN credential: TURN_SERVERS, else STUN only; ``ttl`` is a hint of when to ask again."""
        if self.turn_servers:
            servers, source = self.turn_servers, "static"
        else:
            servers, source = self.stun_servers, "stun-only"
        if self.providers:  # without any, STUN only is the configuration, warned about at start
            what = "static TURN_SERVERS" if source == "static" else "STUN only: calls behind strict NATs will fail"
            self._degraded.warn(now, f"no valid TURN credential: serving {what}")
        ttl = min(DEGRADED_TTL, self.cache_ttl)
        return Answer(servers, source, now + ttl, now)


def _scope(user: str | None, capped: bool) -> str:
    """Name a cache's scope in the store: "" (shared), "user:ID", and "capped"/"capped:user:ID" past the ceiling."""
    scope = "" if user is None else f"user:{user}"
    return scope if not capped else f"capped:{scope}" if scope else "capped"


def _answer_key(credential: Credential | None, now: float) -> int:
    """Key an answer by what its body shows: the credential's whole seconds left (ttl), or the second."""
    return int(credential.expires_at - now) if credential is not None else int(now)


def _encode(body: dict) -> bytes:
    """Encode a response body as compact JSON."""
    return json.dumps(body, separators=(",", ":")).encode()
