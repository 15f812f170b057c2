"""HTTPS on the one box from nothing, as docs/one-box.md step 6 says, with real parts and no account.

Debian's pebble (Let's Encrypt's test ACME server) with its challenge test server for DNS, Debian's
certbot and nginx, and the shipped site on loopback: the port-80 file first (no certificate yet),
the first certificate through it (HTTP-01, webroot), then the HTTPS file; then a renewal, after
which nginx serves the new certificate (certbot's deploy hook reloads it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import warnings
from pathlib import Path

import pytest
import requests

from tests.redis_topologies import make_ca, make_server_cert
from tests.servers import ROOT, app_env, free_port, wait_until

pytestmark = pytest.mark.deploy

DOMAIN = "ice-servers.example.test"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Pebble:
    """pebble and pebble-challtestsrv on loopback: an ACME directory whose HTTP-01 checks come to ``http_port``."""

    def __init__(self, workdir: Path, http_port: int):
        """Pick ports and make the TLS certificate of the ACME API (certbot verifies it against ``ca``)."""
        self.workdir, self.http_port = workdir, http_port
        self.acme_port, self.dns_port = free_port(), free_port()
        self.ca, ca_key, ca_cert = make_ca(workdir, "acme-api-ca")
        self.cert, self.key = make_server_cert(workdir, ca_key, ca_cert)
        self.processes: list[subprocess.Popen] = []

    @property
    def directory(self) -> str:
        """Return the ACME directory URL."""
        return f"https://127.0.0.1:{self.acme_port}/dir"

    def start(self) -> Pebble:
        """Start the DNS server (every name is 127.0.0.1) and pebble, and wait for the directory."""
        log = open(self.workdir / "pebble.log", "wb")  # noqa: SIM115 (open while they run)
        dns = ["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", f"127.0.0.1:{self.dns_port}"]
        dns += ["-http01", "", "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}"]
        self.processes.append(subprocess.Popen(dns, stdout=log, stderr=subprocess.STDOUT))
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.acme_port}",
                "managementListenAddress": f"127.0.0.1:{free_port()}",
                "certificate": str(self.cert),
                "privateKey": str(self.key),
                "httpPort": self.http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (self.workdir / "pebble.json").write_text(json.dumps(config))
        # No random sleeps, no nonces refused at random, and no authorization reused: a renewal validates again.
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        pebble = ["pebble", "-config", str(self.workdir / "pebble.json"), "-dnsserver", f"127.0.0.1:{self.dns_port}"]
        self.processes.append(subprocess.Popen(pebble, stdout=log, stderr=subprocess.STDOUT, env=env))
        wait_until(self._answers, 20, interval=0.2, what="pebble's directory")
        return self

    def _answers(self) -> bool:
        try:
            return requests.get(self.directory, verify=str(self.ca), timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        """Stop both."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.wait(10)


class Box:
    """nginx as the one box runs it: the shipped site's files in a sites directory, as installed step by step."""

    def __init__(self, workdir: Path, app_port: int):
        """Lay out nginx's prefix, certbot's directories and the webroot."""
        self.workdir = workdir
        self.http_port, self.https_port = free_port(), free_port()
        self.app_port = app_port
        self.webroot = workdir / "letsencrypt-webroot"
        self.letsencrypt = workdir / "etc-letsencrypt"
        for directory in (self.webroot, self.letsencrypt, workdir / "sites", workdir / "certbot-work", workdir / "certbot-logs"):
            directory.mkdir()
        user = "user root;" if os.geteuid() == 0 else ""
        (workdir / "nginx.conf").write_text(
            f"{user}\nworker_processes 1;\npid {workdir}/nginx.pid;\nerror_log {workdir}/error.log;\nevents {{}}\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {workdir}/body;\n  proxy_temp_path {workdir}/proxy;\n"
            f"  include {workdir}/sites/*.conf;\n}}\n"
        )
        self.process: subprocess.Popen | None = None

    def nginx(self, *args: str) -> list[str]:
        """Return the command line of nginx on this box's configuration."""
        return [NGINX, "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf"), *args]

    def install(self, name: str) -> None:
        """Install a file of deploy/nginx/ as docs/one-box.md says: the domain in, on the test's ports and paths."""
        site = (
            (ROOT / "deploy" / "nginx" / name)
            .read_text()
            .replace("ice.example.com", DOMAIN)
            .replace("listen [::]:80;", "")
            .replace("listen [::]:443 ssl http2;", "")
            .replace("listen 80;", f"listen 127.0.0.1:{self.http_port};")
            .replace("listen 443 ssl http2;", f"listen 127.0.0.1:{self.https_port} ssl http2;")
            .replace("/var/www/letsencrypt", str(self.webroot))
            .replace("/etc/letsencrypt", str(self.letsencrypt))
            .replace("127.0.0.1:8000", f"127.0.0.1:{self.app_port}")
            .replace("/var/lib/nginx/ice-servers-micro-cache", str(self.workdir / "micro-cache"))
        )
        (self.workdir / "sites" / name).write_text(site)

    def check(self) -> subprocess.CompletedProcess:
        """Run `nginx -t`."""
        return subprocess.run(self.nginx("-t"), capture_output=True, text=True)

    def start(self) -> None:
        """Start nginx and wait for port 80."""
        self.process = subprocess.Popen(self.nginx("-g", "daemon off;"), stderr=subprocess.PIPE)
        wait_until(self._answers_http, 10, what="nginx on port 80")

    def reload(self) -> None:
        """Reload nginx, as `systemctl reload nginx` does."""
        subprocess.run(self.nginx("-s", "reload"), check=True, capture_output=True)

    def _answers_http(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.http_port}/", allow_redirects=False, timeout=2).status_code == 301
        except requests.RequestException:
            return False

    def served_certificate(self) -> bytes:
        """Return the DER certificate nginx serves on HTTPS (nothing while it does not listen yet)."""
        try:
            return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", self.https_port), timeout=5))
        except OSError:
            return b""

    def live_certificate(self) -> bytes:
        """Return the DER certificate certbot's live/ link points to now."""
        return ssl.PEM_cert_to_DER_cert((self.letsencrypt / "live" / DOMAIN / "cert.pem").read_text())

    def certbot(self, pebble: Pebble, *args: str) -> subprocess.CompletedProcess:
        """Run certbot on this box's directories against pebble, trusting the ACME API's CA."""
        directories = ["--config-dir", str(self.letsencrypt), "--work-dir", str(self.workdir / "certbot-work")]
        directories += ["--logs-dir", str(self.workdir / "certbot-logs")]
        env = {**os.environ, "REQUESTS_CA_BUNDLE": str(pebble.ca)}
        return subprocess.run(["certbot", *args, *directories, "--non-interactive"], capture_output=True, text=True, env=env, timeout=120)

    def stop(self) -> None:
        """Stop nginx."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            self.process.wait(10)


def test_https_from_nothing_then_a_renewal_through_the_shipped_site(tmp_path, start_host, redis_url):
    host = start_host(app_env(None, redis_url), workers=2)
    box = Box(tmp_path, host.port)
    pebble = Pebble(tmp_path, box.http_port)
    try:
        pebble.start()
        # 1. The port-80 file alone: it needs no certificate, so nginx -t passes on a box that has none.
        box.install("ice-servers-http.conf")
        assert box.check().returncode == 0, box.check().stderr
        box.start()
        # The challenge's path wins over the dot-file rule (a prefix with ^~), and nothing else is served there.
        (box.webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
        (box.webroot / ".well-known" / "acme-challenge" / "probe").write_text("token")
        (box.webroot / ".well-known" / "acme-challenge" / ".secret").write_text("not a token")
        probe = requests.get(f"http://127.0.0.1:{box.http_port}/.well-known/acme-challenge/probe", timeout=5)
        assert probe.status_code == 200 and probe.text == "token"
        for path in ("/.env", "/.well-known/acme-challenge/.secret", "/.well-known/acme-challenge/", "/.well-known/other"):
            assert requests.get(f"http://127.0.0.1:{box.http_port}{path}", allow_redirects=False, timeout=5).status_code == 404, path
        # The HTTPS file would not pass nginx -t yet: its certificate does not exist.
        box.install("ice-servers.conf")
        assert box.check().returncode != 0
        (tmp_path / "sites" / "ice-servers.conf").unlink()

        # 2. The reload hook for every renewal (certbot runs what renewal-hooks/deploy/ holds), then the first
        # certificate, through the site.
        hooks = box.letsencrypt / "renewal-hooks" / "deploy"
        hooks.mkdir(parents=True)
        (hooks / "reload-nginx").write_text("#!/bin/sh\nexec " + " ".join(box.nginx("-s", "reload")) + "\n")
        (hooks / "reload-nginx").chmod(0o755)
        issued = box.certbot(
            pebble,
            "certonly",
            "--server",
            pebble.directory,
            "--agree-tos",
            "--register-unsafely-without-email",
            "--webroot",
            "-w",
            str(box.webroot),
            "-d",
            DOMAIN,
        )
        assert issued.returncode == 0, issued.stdout + issued.stderr

        # 3. TLS on: the HTTPS file, checked, then a reload.
        box.install("ice-servers.conf")
        assert box.check().returncode == 0, box.check().stderr
        box.reload()
        wait_until(lambda: box.served_certificate() == box.live_certificate(), 10, what="nginx serving the certificate")
        first = box.served_certificate()
        with warnings.catch_warnings():  # pebble's root is nobody's trust anchor: the chain is not what is checked here
            warnings.simplefilter("ignore")
            answer = requests.get(f"https://127.0.0.1:{box.https_port}/api/ice-servers", verify=False, timeout=5)
        assert answer.status_code == 200 and answer.json()["source"] == "stun-only"

        # 4. A renewal, as certbot's timer runs it: validated again through port 80, and the hook reloads nginx.
        renewed = box.certbot(pebble, "renew", "--force-renewal", "--no-random-sleep-on-renew")
        assert renewed.returncode == 0, renewed.stdout + renewed.stderr
        assert box.live_certificate() != first
        wait_until(lambda: box.served_certificate() == box.live_certificate(), 10, what="nginx serving the renewed certificate")
        assert "reload-nginx" in (box.workdir / "certbot-logs" / "letsencrypt.log").read_text()  # certbot ran the hook
    finally:
        box.stop()
        pebble.stop()
