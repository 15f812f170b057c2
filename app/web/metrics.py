"""Prometheus metrics, recorded in this one place and summed over all gunicorn workers.

The core and the spend ceiling report through the Recorder they are handed (app/core/ports.py);
PrometheusRecorder is the web layer's. Under gunicorn every worker writes to
PROMETHEUS_MULTIPROC_DIR (set by gunicorn.conf.py before the app is imported) and /metrics sums
the files of all workers.

Every label value is a fixed word (a source, an outcome, an event, a status): never a user, an
address or a secret.
"""

from __future__ import annotations

import functools
import threading
import time

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

SOURCES = ("cloudflare", "twilio", "metered", "turn-secret", "static", "stun-only")
PROVIDERS = ("cloudflare", "twilio", "metered")  # the remote ones, whose calls are counted
OUTCOMES = ("success", "rejected", "rate_limited", "invalid", "unavailable")
EVENTS = ("hit", "miss", "stale", "lock_wait", "refresh", "deferred", "bounded")
REFUSALS = (401, 403, 429)
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Serverless, /metrics serves this instead of numbers: an instance lives for a few requests, and its counters are not the
# fleet's (a scrape would reach one instance at random, and sum nothing). Comments only: a scrape succeeds with no sample.
SERVERLESS_NOTE = """\
# ice-servers runs serverless: every instance keeps its own counters for a few requests, so this endpoint serves none.
# Count the fleet from its logs instead (ICE_LOG_FORMAT=json: one JSON object per line, with "level" and "message"):
#   upstream calls: messages starting "Generated new" (a credential) and "Failed to fetch TURN credentials" (a failure);
#   stale or fallback spells: "Serving the last TURN credential", "No TURN credential from" (a line a minute at most);
#   answers by status, 429 included: the platform's request log (Vercel's Logs or a log drain; API Gateway or
#   function URL access logs in CloudWatch).
# The rate limit itself is counted in Redis, per source address. See docs/serverless.md.
"""

REQUESTS = Counter("ice_requests", "ICE server answers served, by source (static and stun-only: no TURN credential).", ["source"])
UPSTREAM_REQUESTS = Counter(
    "ice_upstream_requests", f"Upstream credential requests, by outcome ({', '.join(OUTCOMES)}) and provider.", ["outcome", "provider"]
)
UPSTREAM_DURATION = Histogram(
    "ice_upstream_request_duration_seconds",
    "Time the upstream took to answer a credential request (or to fail).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
)
CACHE_EVENTS = Counter(
    "ice_cache_events",
    "Shared-cache events: hit and miss (reads of the shared cache; a worker re-reads at most every 2 s), stale (served past "
    "its refresh point), lock_wait (waited for another worker's refill), refresh (background refresh started), deferred "
    "(a user's own credential could not be had, past ICE_USER_MINT_RATE or while Cloudflare refuses: the shared one answered), "
    "bounded (past ICE_MAX_USER_RECORDS: the shared one answered).",
    ["event"],
)
REFUSED = Counter(
    "ice_refusals", "Credential requests refused, by status: 401 (no valid token), 403 (origin), 429 (rate limit).", ["status"]
)
CREDENTIAL_EXPIRY = Gauge(
    "ice_credential_expiry_timestamp_seconds",
    "Unix time at which the newest credential held by a live worker expires.",
    multiprocess_mode="livemax",
)
CREDENTIAL_REFRESH = Gauge(
    "ice_credential_refresh_timestamp_seconds",
    "Unix time at which the newest credential held by a live worker reaches its refresh point (the end of its cache window).",
    multiprocess_mode="livemax",
)
STORE_LOCAL = Gauge(
    "ice_store_fallback",
    "1 while a live worker serves from its own in-process store because the shared cache (Redis) fails, else 0.",
    multiprocess_mode="livemax",
)


_MADE = threading.Lock()  # the ceiling's metrics are made on first use, by whichever thread gets there first


@functools.cache
def _reading_metrics() -> tuple[Gauge, Gauge, Counter, Gauge]:
    read_at = Gauge(
        "ice_turn_egress_reading_timestamp_seconds",
        "Unix time of the last good reading of TURN egress from Cloudflare's analytics (0: none yet).",
        multiprocess_mode="max",
    )
    interval = Gauge(
        "ice_turn_egress_check_interval_seconds", "ICE_USAGE_CHECK_INTERVAL: seconds between readings.", multiprocess_mode="mostrecent"
    )
    readings = Counter("ice_turn_egress_readings", "Queries of Cloudflare's analytics API for the egress, by outcome.", ["outcome"])
    for outcome in ("success", "failed"):
        readings.labels(outcome)  # at 0 from the start: increase() sees the first failure after a restart
    failed_at = Gauge(
        "ice_turn_egress_failure_timestamp_seconds",
        "Unix time of the last failed reading of TURN egress (0: none).",
        multiprocess_mode="max",
    )
    return read_at, interval, readings, failed_at


def reading_metrics() -> tuple[Gauge, Gauge, Counter, Gauge]:
    """Return what says whether the ceiling can see: the last good reading's time, the interval, readings, the last failure.

    Made on first use, as the egress gauges: without ICE_EGRESS_LIMIT_GB they do not appear.
    """
    with _MADE:
        return _reading_metrics()


def egress_gauges() -> tuple[Gauge, Gauge]:
    """Return the egress and limit gauges (made once, whichever thread asks first)."""
    with _MADE:
        return _egress_gauges()


@functools.cache
def _egress_gauges() -> tuple[Gauge, Gauge]:
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


class PrometheusRecorder:
    """The Recorder of app/core/ports.py, in Prometheus metrics; label children are bound once (a lookup per request costs)."""

    def __init__(self):
        """Bind every label value there is; in multiprocess mode each value notices the fork and starts its worker's file."""
        self._sources = {source: REQUESTS.labels(source) for source in SOURCES}
        self._outcomes = {(o, p): UPSTREAM_REQUESTS.labels(o, p) for o in OUTCOMES for p in PROVIDERS}
        self._events = {event: CACHE_EVENTS.labels(event) for event in EVENTS}
        self._refused = {status: REFUSED.labels(str(status)) for status in REFUSALS}
        self._newest = float("-inf")  # the refresh point of the newest credential this worker has held
        STORE_LOCAL.set(0)

    def answered(self, source: str) -> None:
        """Count one answer by source."""
        self._sources[source].inc()

    def cache_event(self, event: str) -> None:
        """Count one cache event."""
        self._events[event].inc()

    def upstream(self, outcome: str, seconds: float, provider: str = "cloudflare") -> None:
        """Count and time one upstream call."""
        self._outcomes[(outcome, provider if provider in PROVIDERS else "cloudflare")].inc()
        UPSTREAM_DURATION.observe(seconds)

    def credential(self, refresh_at: float, expires_at: float) -> None:
        """Show when the newest credential this worker holds reaches its refresh point and expires.

        The newest is the one whose window ends last: a shorter grant issued later (a lowered
        TURN_CREDENTIAL_TTL, another vendor) expires before the one it replaced, but is newer.
        """
        if refresh_at > self._newest:
            self._newest = refresh_at
            CREDENTIAL_EXPIRY.set(expires_at)
            CREDENTIAL_REFRESH.set(refresh_at)

    def store_local(self, local: bool) -> None:
        """Show whether this worker serves from its own store."""
        STORE_LOCAL.set(1 if local else 0)

    def egress(self, egress_bytes: int | None, limit_bytes: int, read_at: float | None = None, interval: float | None = None) -> None:
        """Show the month's TURN egress against the limit: NaN without a reading this month (last month's never fires an alert)."""
        egress, limit = egress_gauges()
        limit.set(limit_bytes)
        egress.set(float("nan") if egress_bytes is None else egress_bytes)
        reading_at, every, _, _ = reading_metrics()
        reading_at.set(read_at or 0)
        if interval is not None:
            every.set(interval)

    def usage_reading(self, outcome: str) -> None:
        """Count one query of the analytics API; a failure's time is shown too."""
        _, _, readings, failed_at = reading_metrics()
        readings.labels(outcome).inc()
        if outcome == "failed":
            failed_at.set(time.time())

    def refused(self, status: int) -> None:
        """Count one refusal of a credential route (statuses other than 401, 403 and 429 are not refusals)."""
        counter = self._refused.get(status)
        if counter is not None:
            counter.inc()


def render() -> bytes:
    """Return the exposition text: summed over all workers in multiprocess mode."""
    if values.ValueClass is values.MutexValue:  # a single process (flask run, tests)
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)
