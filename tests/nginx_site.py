"""The shipped nginx site for the tests: Debian's nginx running deploy/nginx/ in front of a gunicorn host, over TLS.

Both files, as an operator installs them at the end (port 80, then HTTPS), with the ports, the
certificate (self-signed, made here) and the micro-cache's directory moved to the test's. Options:
Debian's stock default site beside it, and an operator's cache for the whole box that ignores
Cache-Control (the site must still store nothing but what the app marks).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import ssl
import subprocess
from pathlib import Path

from tests.servers import ROOT, free_port, wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MICRO_CACHE_DIR = "/var/lib/nginx/ice-servers-micro-cache"


def site_files() -> str:
    """Return the shipped site as an operator installs it at the end: the port-80 file, then the HTTPS one."""
    return (ROOT / "deploy/nginx/ice-servers-http.conf").read_text() + (ROOT / "deploy/nginx/ice-servers.conf").read_text()


def stock_default_site() -> str:
    """Return Debian's default nginx site as apt installs it (enabled, default_server, root /var/www/html)."""
    return Path("/etc/nginx/sites-available/default").read_text()


def tls_request(port: int, method: str, path: str, body: bytes | None = None, headers=None, source: str = "127.0.0.1"):
    """Send one HTTPS request to nginx from ``source``; return (status, headers, body)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the test's self-signed certificate
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, source_address=(source, 0), timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


class KeptAlive:
    """GET requests to one nginx server over one kept-alive connection from ``source``, opened again once if nginx closed it."""

    def __init__(self, port: int, tls: bool = True, source: str = "127.0.0.1"):
        """Connect lazily to ``port`` (HTTPS with the test's self-signed certificate when ``tls``)."""
        self.port = port
        if tls:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            self.connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, source_address=(source, 0), timeout=10)
        else:
            self.connection = http.client.HTTPConnection("127.0.0.1", port, source_address=(source, 0), timeout=10)

    def get(self, path: str = "/api/ice-servers", headers=None) -> tuple[int, dict, bytes]:
        """GET ``path``; return (status, headers, body)."""
        for attempt in (1, 2):
            try:
                self.connection.request("GET", path, headers=headers or {})
                response = self.connection.getresponse()
                return response.status, dict(response.getheaders()), response.read()
            except (http.client.RemoteDisconnected, ConnectionError, http.client.CannotSendRequest):
                self.connection.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()


class NginxSite:
    """Debian's nginx with the shipped site in front of the app on ``app_port``, on free loopback ports."""

    def __init__(self, workdir: Path, app_port: int, default_site: bool = False, operator_cache: bool = False, workers: str = "1"):
        """Write the configuration; ``start`` runs nginx (``workers``: its worker_processes; Debian's nginx.conf says auto)."""
        self.workdir = workdir
        self.http_port, self.https_port = free_port(), free_port()
        self.default_port = free_port() if default_site else None
        self.micro = workdir / "micro-cache"  # the site's own cache
        self.cache = workdir / "cache"  # the operator's, for the whole box
        self.process: subprocess.Popen | None = None
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
            + ["-keyout", str(workdir / "key.pem"), "-out", str(workdir / "cert.pem")],
            check=True,
            capture_output=True,
        )
        site = (
            site_files()
            .replace("listen [::]:80;", "")
            .replace("listen [::]:443 ssl http2;", "")
            .replace("listen 80;", f"listen 127.0.0.1:{self.http_port};")
            .replace("listen 443 ssl http2;", f"listen 127.0.0.1:{self.https_port} ssl http2;")
            .replace("/etc/letsencrypt/live/ice.example.com/fullchain.pem", str(workdir / "cert.pem"))
            .replace("/etc/letsencrypt/live/ice.example.com/privkey.pem", str(workdir / "key.pem"))
            .replace("127.0.0.1:8000", f"127.0.0.1:{app_port}")
            .replace(MICRO_CACHE_DIR, str(self.micro))
        )
        (workdir / "site.conf").write_text(site)
        includes = f"  include {workdir}/site.conf;\n"
        if default_site:
            # Debian's default site as apt enables it (root /var/www/html, default_server), on a port of the test's.
            stock = (
                stock_default_site()
                .replace("listen [::]:80 default_server;", "")
                .replace("listen 80 default_server;", f"listen 127.0.0.1:{self.default_port} default_server;")
            )
            (workdir / "default.conf").write_text(stock)
            includes += f"  include {workdir}/default.conf;\n"
        box_cache = (
            f"  proxy_cache_path {self.cache} keys_zone=everything:1m;\n  proxy_cache everything;\n"
            "  proxy_cache_valid 200 10m;\n  proxy_ignore_headers Cache-Control Expires;\n"
            if operator_cache
            else ""
        )
        user = "user root;" if os.geteuid() == 0 else ""
        (workdir / "nginx.conf").write_text(
            f"{user}\nworker_processes {workers};\npid {workdir}/nginx.pid;\nerror_log {workdir}/error.log;\nevents {{}}\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {workdir}/body;\n  proxy_temp_path {workdir}/proxy;\n"
            f"{box_cache}{includes}}}\n"
        )

    def start(self) -> NginxSite:
        """Start nginx and wait until it answers HTTPS."""
        self.process = subprocess.Popen([NGINX, "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf"), "-g", "daemon off;"])
        wait_until(self._answers, 10, what="nginx start")
        return self

    def stop(self) -> None:
        """Stop nginx gracefully."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            self.process.wait(10)

    def request(self, method: str, path: str, body: bytes | None = None, headers=None, source: str = "127.0.0.1"):
        """Send one HTTPS request; return (status, headers, body)."""
        return tls_request(self.https_port, method, path, body, headers, source)

    def _answers(self) -> bool:
        """Tell whether nginx answers HTTPS."""
        if self.process.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.process.returncode}: {(self.workdir / 'error.log').read_text()[-500:]}")
        try:
            return self.request("GET", "/healthz")[0] == 200
        except OSError:
            return False
