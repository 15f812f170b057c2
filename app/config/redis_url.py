"""The REDIS_URL grammar: one server, a Unix socket, Sentinel or Cluster, with TLS and ACL users, parsed once.

    redis://[user:pass@]host[:port][/db]           rediss://... (TLS)
    unix://[user:pass@]/path/to/redis.sock[?db=N]
    redis+sentinel://[user:pass@]host:port,host:port/SERVICE[/db]      rediss+sentinel://...
    redis+cluster://[user:pass@]host:port,host:port                    rediss+cluster://...

The user and password are Redis's (ACL, Redis 6+); sentinels that need a password of their own
get REDIS_SENTINEL_PASSWORD. Every error message names REDIS_URL and never echoes the password.
Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

SCHEMES = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("unix", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
_DIGITS = re.compile(r"[0-9]{1,5}")  # ASCII only: int() takes "٣" too
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?\Z")


@dataclass(frozen=True)
class RedisTarget:
    """Where the shared cache lives and how to reach it."""

    topology: str  # single, unix, sentinel or cluster
    tls: bool = False
    nodes: tuple[tuple[str, int], ...] = ()  # the server; the sentinels; the cluster's startup nodes
    path: str | None = None  # the Unix socket
    db: int = 0
    service: str | None = None  # the Sentinel service (master group) name
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # PEM of the CA that signed the servers' certificates (TLS)
    sentinel_password: str | None = field(default=None, repr=False)
    cold_connections: bool = False  # serverless: each instance connects on a request, cold (longer timeouts)

    def describe(self) -> str:
        """Name the target for logs and status lines, without the password."""
        where = self.path or ",".join(f"{host}:{port}" for host, port in self.nodes)
        name = {"single": "single server", "unix": "Unix socket", "sentinel": f"Sentinel service {self.service}", "cluster": "Cluster"}
        return f"{name[self.topology]} at {where}{' (TLS)' if self.tls else ''}"


def parse_redis_url(url: str, ca_file: str | None = None, sentinel_password: str | None = None) -> RedisTarget:
    """Parse REDIS_URL; raise ValueError with a one-line message that names REDIS_URL and hides the password."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError(f"REDIS_URL must start with one of {', '.join(s + '://' for s in SCHEMES)}")
    topology, tls = SCHEMES[scheme.lower()]
    if topology == "unix":
        userinfo, _, path = rest.rpartition("@")
        return _unix(path, *_credentials(userinfo))
    if "?" in rest or "#" in rest:
        raise ValueError("REDIS_URL takes no ?options: TLS is rediss://, its CA is REDIS_CA_FILE, the database is /N")
    authority, _, path = rest.partition("/")
    userinfo, _, hosts = authority.rpartition("@")
    username, password = _credentials(userinfo)
    default_port = DEFAULT_SENTINEL_PORT if topology == "sentinel" else DEFAULT_PORT
    nodes = tuple(_node(item, default_port) for item in hosts.split(","))
    segments = [segment for segment in path.split("/") if segment] if path else []
    service, db = None, 0
    if topology == "single":
        if len(nodes) != 1:
            raise ValueError("REDIS_URL names several hosts: use redis+sentinel:// or redis+cluster:// for more than one")
        db = _db(segments, 1)
    elif topology == "sentinel":
        if not segments:
            raise ValueError("REDIS_URL names no Sentinel service: redis+sentinel://host:26379,host:26379/SERVICE[/db]")
        service, db = unquote(segments[0]), _db(segments[1:], 1)
    else:
        db = _db(segments, 1)
        if db != 0:
            raise ValueError(f"REDIS_URL names database {db}, but Redis Cluster has only database 0")
    if ca_file and not tls:
        raise ValueError("REDIS_CA_FILE is set but REDIS_URL does not use TLS: use rediss://, rediss+sentinel:// or rediss+cluster://")
    return RedisTarget(topology, tls, nodes, None, db, service, username, password, ca_file, sentinel_password)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    """Split ``user:pass`` (either may be empty), percent-decoded."""
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon and password else None)


def _node(item: str, default_port: int) -> tuple[str, int]:
    """Parse ``host[:port]`` (IPv6 in brackets)."""
    match = _HOST.match(item.strip())
    if not match:
        raise ValueError("REDIS_URL has a host that is not host:port (IPv6 in brackets: [::1]:6379)")
    port = int(match.group(2) or default_port)
    if not 0 < port < 65536:
        raise ValueError(f"REDIS_URL has port {port}, outside 1..65535")
    return match.group(1).strip("[]"), port


def _db(segments: list[str], most: int) -> int:
    """Parse the database number from what is left of the path."""
    if len(segments) > most:
        raise ValueError("REDIS_URL has a path that is not /db (or /SERVICE/db with Sentinel)")
    if not segments:
        return 0
    db = int(segments[0]) if _DIGITS.fullmatch(segments[0]) else None
    if db is None:
        raise ValueError("REDIS_URL's database must be a number such as /0")
    return db


def _unix(rest: str, username: str | None, password: str | None) -> RedisTarget:
    """Parse ``/path/to/redis.sock[?db=N]``."""
    path, _, query = rest.partition("?")
    if not path.startswith("/"):
        raise ValueError("REDIS_URL must name the socket's absolute path: unix:///run/redis/redis.sock")
    db = 0
    for pair in filter(None, query.split("&")):
        name, _, value = pair.partition("=")
        db = int(value) if name == "db" and _DIGITS.fullmatch(value) else None
        if db is None:
            raise ValueError("REDIS_URL takes only ?db=N after a Unix socket path")
    return RedisTarget("unix", False, (), unquote(path), db, None, username, password)
