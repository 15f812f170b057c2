"""Connections to the Redis REDIS_URL names: the store's client and the rate limit's, from one parsed value.

Every topology gets the same short timeouts, TLS with the certificate and host name verified
(against REDIS_CA_FILE when set), and the ACL user. The primary behind Sentinel is looked up on
every new connection, so running hosts follow a promotion; a Cluster client is built on first
use, so the service starts while the cluster is down.
"""

from __future__ import annotations

import threading

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from app.config.redis_url import RedisTarget

SOCKET_TIMEOUT = 0.5  # seconds, on the connect and on every command: a Redis that hangs costs one of these, never more
# Serverless (REDIS_URL's target has cold_connections): every instance connects on a request, from a cold start, often to
# a managed Redis in another zone over TLS (Upstash, ElastiCache Serverless). The connect takes DNS and a TCP handshake,
# then TLS and AUTH each wait a round trip on a CPU that is still warming up: 0.5 s fails the first request of too many
# instances. A hung Redis still costs one of these per instance, and then its breaker holds the rest back.
COLD_CONNECT_TIMEOUT = 2.0
COLD_SOCKET_TIMEOUT = 1.0


def timeouts(target: RedisTarget) -> tuple[float, float]:
    """Return the connect and the command timeouts for ``target``'s connections."""
    return (COLD_CONNECT_TIMEOUT, COLD_SOCKET_TIMEOUT) if target.cold_connections else (SOCKET_TIMEOUT, SOCKET_TIMEOUT)


CLUSTER_RETRIES = 3  # a refused connection and CLUSTERDOWN retried a few times, a few ms apart: within a request's budget


class ReconnectOnce(Retry):
    """One immediate reconnect on a refused or dropped connection (a restarted server, a failed-over primary).

    Never a retry on a timeout: a Redis that accepts connections but never answers (stopped,
    partitioned, in a long fork) would cost a second timeout for nothing; redis-py's default retries
    timeouts too. Nor on a failed Sentinel lookup (a ConnectionError too): it asked every sentinel already.
    """

    def __init__(self):
        """Retry a connection error once, at once."""
        super().__init__(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        """Run ``do``, retrying as above."""

        def retryable(error: Exception) -> bool:
            return not isinstance(error, MasterNotFoundError) and (is_retryable is None or is_retryable(error))

        return super().call_with_retry(do, fail, retryable, with_failure_count)


RECONNECT_ONCE = ReconnectOnce()


def connection_options(target: RedisTarget) -> dict:
    """Return what every connection to a Redis node takes: timeouts, the ACL user, TLS."""
    connect, command = timeouts(target)
    options = {"socket_timeout": command, "socket_connect_timeout": connect}
    if target.username:
        options["username"] = target.username
    if target.password:
        options["password"] = target.password
    if target.tls:
        options.update(ssl_cert_reqs="required", ssl_check_hostname=True)
        if target.ca_file:
            options["ssl_ca_certs"] = target.ca_file
    return options


def sentinel_options(target: RedisTarget) -> dict:
    """Return what connections to the sentinels take: their own password (never Redis's), timeouts, TLS."""
    # No retry at all: a lookup asks each sentinel in turn already, and a silent one costs one timeout, not redis-py's ten.
    connect, command = timeouts(target)
    options = {
        "socket_timeout": command,
        "socket_connect_timeout": connect,
        "password": target.sentinel_password,
        "retry": Retry(NoBackoff(), 0),
    }
    if target.tls:
        options.update(ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True)
        if target.ca_file:
            options["ssl_ca_certs"] = target.ca_file
    return options


class Connection:
    """The store's client for one target, and what it can say about the topology."""

    def __init__(self, target: RedisTarget):
        """Build the client; a Cluster client on first use."""
        self.target = target
        self._sentinel: Sentinel | None = None
        options = connection_options(target)
        once = RECONNECT_ONCE
        if target.topology == "single":
            host, port = target.nodes[0]
            self.client = redis.Redis(host=host, port=port, db=target.db, ssl=target.tls, retry=once, **options)
        elif target.topology == "unix":
            self.client = redis.Redis(unix_socket_path=target.path, db=target.db, retry=once, **options)
        elif target.topology == "sentinel":
            self._sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_options(target), ssl=target.tls, **options)
            self.client = self._sentinel.master_for(target.service, db=target.db, retry=once)
        else:
            nodes = [ClusterNode(host, port) for host, port in target.nodes]
            retry = Retry(ExponentialBackoff(cap=0.05, base=0.01), CLUSTER_RETRIES)
            self.client = LazyClient(lambda: Cluster(startup_nodes=nodes, ssl=target.tls, retry=retry, **options))

    def describe(self, ask: bool = True) -> str:
        """Name the topology and its state: the current primary behind Sentinel, the cluster's state (``ask``: from Redis)."""
        if not ask:
            return f"{self.target.topology}: {self.target.describe()}"
        try:
            if self._sentinel is not None:
                host, port = self._sentinel.discover_master(self.target.service)
                return f"sentinel: service {self.target.service}, primary {host}:{port}"
            if self.target.topology == "cluster":
                info = self.client.cluster_info()
                return f"cluster: state {info.get('cluster_state', '?')}, {info.get('cluster_size', '?')} primaries serving slots"
        except (redis.RedisError, RedisClusterException) as exc:
            return f"{self.target.topology}: not answering ({type(exc).__name__})"
        return f"{self.target.topology}: {self.target.describe()}"


class Cluster(RedisCluster):
    """redis-py's cluster client, but a timeout is never retried (a hung node costs one socket timeout, as elsewhere).

    Its pipelines re-send every command that failed, one by one, whatever this class allows: the store
    uses none on a cluster (app/store/redis.py reads one by one and writes with scripts).
    """

    ERRORS_ALLOW_RETRY = tuple(error for error in RedisCluster.ERRORS_ALLOW_RETRY if error is not redis.TimeoutError)


class LazyClient:
    """A client built on first use, and built again after a failed build (a cluster that was down)."""

    def __init__(self, build):
        """Keep the builder."""
        self._build = build
        self._client = None
        self._mutex = threading.Lock()

    def register_script(self, script: str) -> Script:
        """Return a script bound to this proxy: its SHA needs no connection, its first call builds the client."""
        return Script(self, script.encode())

    def __getattr__(self, name: str):
        """Build the client if need be, then hand over the attribute; while no node answers, a method that raises ConnectionError."""
        client = self._client
        if client is None:
            with self._mutex:
                if self._client is None:
                    try:
                        self._client = self._build()
                    except RedisClusterException as exc:  # no startup node answered: a connection failure for the caller
                        failure = f"no cluster node answered ({type(exc).__name__})"

                        def unavailable(*args, **kwargs):
                            raise redis.ConnectionError(failure)

                        return unavailable  # raised when called, inside the caller's handling of Redis errors
                client = self._client
        return getattr(client, name)
