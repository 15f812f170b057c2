"""Real Redis topologies on loopback for the tests: TLS with an ACL user, Sentinel, Cluster; nothing persistent.

Certificates come from a CA made at run time (cryptography); every process runs without
persistence in a test's own directory and is killed at the end.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.servers import free_port, wait_until

ACL_USER = "ice-servers"
ACL_PASSWORD = "test-redis-acl-password-not-a-secret"
ADMIN_PASSWORD = "test-redis-admin-password-not-a-secret"
# The service's least-privilege user, exactly as docs/fleet-and-redis.md gives it (the rate limit's keys are among its own).
ACL_RULES = (
    "on >PASSWORD resetkeys ~ice-servers:* resetchannels -@all "
    "+get +set +del +pttl +incrby +expire +type +time +multi +exec +discard +evalsha +eval +script|load "
    "+ping +info +cluster|slots +cluster|shards +cluster|info"
).replace("PASSWORD", ACL_PASSWORD)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(directory: Path, name: str = "test-ca") -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Make a CA; return its PEM path, key and certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(directory: Path, ca_key, ca_cert) -> tuple[Path, Path]:
    """Make a certificate for 127.0.0.1 and localhost signed by the CA; return (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


class RedisProcess:
    """One redis-server (or sentinel) with the given settings, killed at the end."""

    def __init__(self, directory: Path, settings: list[str], sentinel: bool = False, port: int | None = None):
        """Write its config; ``start`` runs it."""
        self.port = port or free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / ("sentinel.conf" if sentinel else "redis.conf")
        base = [f"port {self.port}", "bind 127.0.0.1", f"dir {directory}", 'save ""', "appendonly no", f"logfile {directory}/log"]
        self.config.write_text("\n".join(base + settings) + "\n")
        self.sentinel = sentinel
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisProcess:
        """Start it; callers wait for it in their own way (TLS, ACL)."""
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [binary, str(self.config)] + (["--sentinel"] if self.sentinel else [])
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def kill(self) -> None:
        """Kill it with SIGKILL, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def client(self, **options) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, **options)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class TlsRedis:
    """A TLS-only redis-server whose certificate a test CA signed, with an ACL user and the default user off."""

    def __init__(self, directory: Path):
        """Make the CA and certificates; ``start`` runs the server."""
        self.ca_file, ca_key, ca_cert = make_ca(directory)
        self.wrong_ca_file = make_ca(directory, "another-ca")[0]
        cert, key = make_server_cert(directory, ca_key, ca_cert)
        self.port = free_port()
        settings = [
            f"tls-port {self.port}",
            f"tls-cert-file {cert}",
            f"tls-key-file {key}",
            f"tls-ca-cert-file {self.ca_file}",
            "tls-auth-clients no",
            "user default off",
            f"user {ACL_USER} {ACL_RULES}",
            f"user admin on >{ADMIN_PASSWORD} ~* &* +@all",  # the tests' own housekeeping (flush)
        ]
        self.node = RedisProcess(directory / "tls", settings, port=free_port())
        self.node.config.write_text(self.node.config.read_text().replace(f"port {self.node.port}\n", "port 0\n", 1))

    def url(self, password: str = ACL_PASSWORD) -> str:
        return f"rediss://{ACL_USER}:{password}@127.0.0.1:{self.port}/0"

    def client(self, username: str = ACL_USER, password: str = ACL_PASSWORD) -> redis.Redis:
        return redis.Redis(port=self.port, ssl=True, ssl_ca_certs=str(self.ca_file), username=username, password=password, socket_timeout=2)

    def flush(self) -> None:
        self.client("admin", ADMIN_PASSWORD).flushall()

    def start(self) -> TlsRedis:
        self.node.start()
        wait_until(lambda: _answers(self.client()), 10, what="TLS redis-server start")
        return self

    def stop(self) -> None:
        self.node.kill()


class SentinelGroup:
    """A primary, a replica and three sentinels (down-after-milliseconds 1000) for the service ``ice``."""

    SERVICE = "ice"

    def __init__(self, directory: Path):
        """Prepare the five processes; ``start`` runs them."""
        self.primary = RedisProcess(directory / "primary", [])
        self.replica = RedisProcess(directory / "replica", [f"replicaof 127.0.0.1 {self.primary.port}"])
        self.sentinels = [
            RedisProcess(
                directory / f"sentinel-{index}",
                [
                    f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 2",
                    f"sentinel down-after-milliseconds {self.SERVICE} 1000",
                    f"sentinel failover-timeout {self.SERVICE} 5000",
                    f"sentinel parallel-syncs {self.SERVICE} 1",
                ],
                sentinel=True,
            )
            for index in range(3)
        ]

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + f"/{self.SERVICE}/0"

    def start(self) -> SentinelGroup:
        self.primary.start()
        wait_until(lambda: _answers(self.primary.client()), 10, what="primary start")
        self.replica.start()
        wait_until(lambda: self.replica.client().info("replication").get("master_link_status") == "up", 15, what="replica in sync")
        for sentinel in self.sentinels:
            sentinel.start()
        for sentinel in self.sentinels:
            wait_until(lambda s=sentinel: self._sentinel_sees_all(s), 20, what="sentinels see the primary, the replica and each other")
        return self

    def flush(self) -> None:
        redis.Redis(port=self.current_primary_port(), socket_timeout=2).flushall()

    def current_primary_port(self) -> int | None:
        for sentinel in self.sentinels:
            try:
                address = sentinel.client().sentinel_get_master_addr_by_name(self.SERVICE)
                return int(address[1]) if address else None
            except redis.RedisError:
                continue
        return None

    def _sentinel_sees_all(self, sentinel: RedisProcess) -> bool:
        try:
            masters = sentinel.client().sentinel_masters()
        except redis.RedisError:
            return False
        state = masters.get(self.SERVICE, {})
        return state.get("num-slaves", 0) >= 1 and state.get("num-other-sentinels", 0) >= 2

    def stop(self) -> None:
        for process in [*self.sentinels, self.replica, self.primary]:
            process.kill()


def _cluster_port() -> int:
    """Return a free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 < 65536 and _free(port + 10000):
            return port


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisClusterGroup:
    """Three primaries made a cluster with ``redis-cli --cluster create``."""

    def __init__(self, directory: Path):
        """Prepare the three nodes; ``start`` runs them and creates the cluster."""
        self.nodes = [
            RedisProcess(
                directory / f"node-{index}",
                ["cluster-enabled yes", f"cluster-config-file {directory}/node-{index}/nodes.conf", "cluster-node-timeout 2000"],
                port=_cluster_port(),
            )
            for index in range(3)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> RedisClusterGroup:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            wait_until(lambda n=node: _answers(n.client()), 10, what="cluster node start")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        subprocess.run([cli, "--cluster", "create", *addresses, "--cluster-yes"], check=True, capture_output=True, timeout=60)
        wait_until(lambda: all(n.client().cluster("info").get("cluster_state") == "ok" for n in self.nodes), 20, what="cluster ok")
        return self

    def flush(self) -> None:
        for node in self.nodes:
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
