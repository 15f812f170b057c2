"""Prometheus metrics, summed over all gunicorn workers.

Under gunicorn every worker writes to PROMETHEUS_MULTIPROC_DIR (set by gunicorn.conf.py before
the app is imported) and /metrics sums the files of all workers.

No label carries a secret: sources, outcomes and cache events are fixed words.
"""

from __future__ import annotations

import functools

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

REQUESTS = Counter("ice_requests", "ICE server answers served, by source.", ["source"])
UPSTREAM_REQUESTS = Counter(
    "ice_upstream_requests",
    "Credential requests to the upstream, by outcome (success, rejected, rate_limited, invalid, unavailable).",
    ["outcome"],
)
UPSTREAM_DURATION = Histogram(
    "ice_upstream_request_duration_seconds",
    "Time the upstream took to answer a credential request (or to fail).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
)
CACHE_EVENTS = Counter(
    "ice_cache_events",
    "Shared-cache events: hit and miss (reads of the shared cache; a worker re-reads at most every 2 s), "
    "stale (served past its refresh point), lock_wait (waited for another worker's refill), refresh (background refresh started).",
    ["event"],
)
CREDENTIAL_EXPIRY = Gauge(
    "ice_credential_expiry_timestamp_seconds",
    "Unix time at which the newest credential held by a live worker expires.",
    multiprocess_mode="livemax",
)


@functools.cache
def egress_gauges() -> tuple[Gauge, Gauge]:
    """Return the egress and limit gauges, made on first use: without ICE_EGRESS_LIMIT_GB they do not appear.

    One fleet-wide value each: every worker sets the shared reading and the newest setting is shown
    (multiprocess mode "mostrecent"), never a sum over workers.
    """
    egress = Gauge(
        "ice_turn_egress_bytes",
        "TURN egress this month to date, in bytes, as Cloudflare's analytics last reported it.",
        multiprocess_mode="mostrecent",
    )
    limit = Gauge("ice_turn_egress_limit_bytes", "ICE_EGRESS_LIMIT_GB in bytes (GB x 10^9).", multiprocess_mode="mostrecent")
    return egress, limit


CONTENT_TYPE = CONTENT_TYPE_LATEST

# Label children bound once: a labels() lookup per request costs more than the increment. In
# multiprocess mode each value notices the fork and starts its worker's own file.
REQUESTS_BY_SOURCE = {source: REQUESTS.labels(source) for source in ("cloudflare", "turn-secret", "static", "stun-only")}
HIT, MISS, STALE, LOCK_WAIT, REFRESH = (CACHE_EVENTS.labels(event) for event in ("hit", "miss", "stale", "lock_wait", "refresh"))


def render() -> bytes:
    """Return the exposition text: summed over all workers in multiprocess mode."""
    if values.ValueClass is values.MutexValue:  # a single process (flask run, tests)
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)
