"""Every artefact in deploy/, for real.

deploy.sh on a fresh clone, pm2 from npm, the systemd unit, and Debian's nginx with a self-signed
certificate in front of gunicorn.
"""

import http.client
import json
import os
import pwd
import shutil
import signal
import ssl
import stat
import subprocess
import time

import pytest
import requests

from tests.cloudflare_stub import API_TOKEN
from tests.servers import ROOT, app_env, clean_environ, free_port, wait_until

# One worker runs the tests that share this module fixture (make test runs them in parallel).
pytestmark = pytest.mark.xdist_group("deploy")

PM2_BIN = ROOT / ".tools" / "node_modules" / ".bin"
FAKE_ENV = b"# test .env: fake values only\nICE_LOG_LEVEL=INFO\nCLOUDFLARE_API_TOKEN_NOTE='not-a-real-token-value'\n"


def app_user() -> str:
    """Return the user deploy.sh may hand .env to: www-data as root (CI), else ourselves."""
    return "www-data" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def fresh_clone(app_dir) -> None:
    """Clone the repository as an operator would, with this working tree's files (committed or not) on top."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(app_dir)], check=True)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        if (ROOT / name).is_file():
            (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, app_dir / name)


def deploy(app_dir, manager="none", **env):
    """Run deploy/deploy.sh of ``app_dir``; return the completed process."""
    environ = {
        **clean_environ(),
        "PATH": f"{PM2_BIN}:{os.environ['PATH']}",
        "APP_DIR": str(app_dir),
        "APP_USER": app_user(),
        "SERVICE_MANAGER": manager,
        **env,
    }
    return subprocess.run(["bash", "deploy/deploy.sh"], cwd=app_dir, env=environ, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """Deploy a fresh clone that has a .env of mode 644."""
    app_dir = tmp_path_factory.mktemp("deploy") / "html"
    fresh_clone(app_dir)
    (app_dir / ".env").write_bytes(FAKE_ENV)
    (app_dir / ".env").chmod(0o644)
    first = deploy(app_dir)
    assert first.returncode == 0, first.stderr
    return app_dir, first


def test_deploy_builds_the_venv_and_keeps_env_byte_for_byte(clone):
    app_dir, first = clone
    assert (app_dir / ".venv" / "bin" / "gunicorn").exists()
    assert (app_dir / ".env").read_bytes() == FAKE_ENV
    env_stat = (app_dir / ".env").stat()
    assert stat.S_IMODE(env_stat.st_mode) == 0o600
    assert pwd.getpwuid(env_stat.st_uid).pw_name == app_user()
    assert "not-a-real-token-value" not in first.stdout + first.stderr


def test_deploy_twice_gives_the_same_result(clone):
    app_dir, _ = clone
    frozen = subprocess.run([app_dir / ".venv/bin/pip", "freeze"], capture_output=True, text=True).stdout
    again = deploy(app_dir)
    assert again.returncode == 0, again.stderr
    assert (app_dir / ".env").read_bytes() == FAKE_ENV
    assert stat.S_IMODE((app_dir / ".env").stat().st_mode) == 0o600
    assert subprocess.run([app_dir / ".venv/bin/pip", "freeze"], capture_output=True, text=True).stdout == frozen


def test_deploy_without_env_warns_and_creates_none(tmp_path):
    app_dir = tmp_path / "html"
    fresh_clone(app_dir)
    (app_dir / ".venv").symlink_to(ROOT / ".venv")  # the venv step is covered above; keep this one quick
    result = deploy(app_dir)
    assert result.returncode == 0, result.stderr
    assert "no .env in" in result.stderr and not (app_dir / ".env").exists()


def test_deploy_refuses_an_unknown_service_manager(clone):
    app_dir, _ = clone
    result = deploy(app_dir, manager="supervisor")
    assert result.returncode == 1
    assert result.stderr.strip() == "deploy: error: SERVICE_MANAGER must be pm2, systemd or none, not 'supervisor'"


@pytest.fixture
def pm2(tmp_path):
    """Run pm2 (from npm, in .tools/) with its own home; kill its daemon afterwards."""
    home = tmp_path / "pm2-home"
    environ = {**clean_environ(), "PM2_HOME": str(home), "PATH": f"{PM2_BIN}:{os.environ['PATH']}"}

    def run(*args, **extra_env):
        return subprocess.run([PM2_BIN / "pm2", *args], env={**environ, **extra_env}, capture_output=True, text=True, timeout=60)

    yield run, environ
    run("kill")


def test_pm2_runs_the_ecosystem_file_and_restart_keeps_the_credential(clone, pm2, cloudflare, redis_url):
    app_dir, _ = clone
    run_pm2, pm2_environ = pm2
    port = free_port()
    env = {
        **app_env(cloudflare.base_url, redis_url),
        "PM2_HOME": pm2_environ["PM2_HOME"],
        "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --workers 4",
    }
    deployed = deploy(app_dir, manager="pm2", HEALTH_URL=f"http://127.0.0.1:{port}/healthz", **env)
    assert deployed.returncode == 0, deployed.stderr
    assert "healthy" in deployed.stdout

    base = f"http://127.0.0.1:{port}"
    first = requests.get(f"{base}/api/ice-servers", timeout=10).json()
    assert first["source"] == "cloudflare" and cloudflare.call_count == 1
    pid_before = run_pm2("pid", "ice-servers").stdout.strip()

    assert run_pm2("restart", "ice-servers").returncode == 0
    wait_until(lambda: run_pm2("pid", "ice-servers").stdout.strip() not in ("", "0", pid_before), 20, what="new gunicorn")
    wait_until(lambda: _answers(f"{base}/healthz"), 20, what="served again")
    second = requests.get(f"{base}/api/ice-servers", timeout=10).json()
    assert second["iceServers"] == first["iceServers"]  # from Redis, not a new upstream call
    assert cloudflare.call_count == 1

    logs = run_pm2("logs", "ice-servers", "--nostream", "--lines", "200").stdout
    assert "Generating new Cloudflare TURN credentials" in logs
    assert API_TOKEN not in logs


def _answers(url: str) -> bool:
    """Tell whether ``url`` answers 200."""
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_systemd_unit_passes_verify(tmp_path):
    unit = (ROOT / "deploy/ice-servers.service").read_text()
    for needed in (
        "User=www-data",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "After=network-online.target redis-server.service",
    ):
        assert needed in unit
    assert "Requires=ice-servers.socket" in unit
    # The binary path stubbed to this checkout, which has a .venv, as deploy.sh does with APP_DIR.
    (tmp_path / "ice-servers.service").write_text(unit.replace("/var/www/html", str(ROOT)))
    shutil.copy(ROOT / "deploy/ice-servers.socket", tmp_path / "ice-servers.socket")
    units = [str(tmp_path / "ice-servers.socket"), str(tmp_path / "ice-servers.service")]
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "ice-servers.s" not in result.stderr


@pytest.fixture
def nginx(tmp_path, start_host, cloudflare, redis_url):
    """Run Debian's nginx with deploy/nginx/ice-servers.conf (ports and certificate paths moved to the test's)."""
    app = start_host(app_env(cloudflare.base_url, redis_url), args="--access-logfile -")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    http_port, https_port = free_port(), free_port()
    site = (
        (ROOT / "deploy/nginx/ice-servers.conf")
        .read_text()
        .replace("listen [::]:80;", "")
        .replace("listen [::]:443 ssl http2;", "")
        .replace("listen 80;", f"listen 127.0.0.1:{http_port};")
        .replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
        .replace("/etc/letsencrypt/live/ice.example.com/fullchain.pem", str(tmp_path / "cert.pem"))
        .replace("/etc/letsencrypt/live/ice.example.com/privkey.pem", str(tmp_path / "key.pem"))
        .replace("127.0.0.1:8000", f"127.0.0.1:{app.port}")
    )
    (tmp_path / "site.conf").write_text(site)
    user = "user root;" if os.geteuid() == 0 else ""
    # An operator's cache for every site of the box, one that ignores Cache-Control: the site must still store nothing.
    (tmp_path / "nginx.conf").write_text(
        f"{user}\nworker_processes 1;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path}/body;\n  proxy_temp_path {tmp_path}/proxy;\n"
        f"  proxy_cache_path {tmp_path}/cache keys_zone=everything:1m;\n  proxy_cache everything;\n"
        "  proxy_cache_valid 200 10m;\n  proxy_ignore_headers Cache-Control Expires;\n"
        f"  include {tmp_path}/site.conf;\n}}\n"
    )
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    process = subprocess.Popen(
        [nginx_bin, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"], stderr=subprocess.PIPE
    )
    wait_until(lambda: _answers_tls(https_port), 10, what="nginx start")
    yield {"http": http_port, "https": https_port, "app": app, "cache": tmp_path / "cache"}
    process.send_signal(signal.SIGQUIT)
    process.wait(10)


def _tls_request(port: int, method: str, path: str, body: bytes | None = None, headers=None, source: str = "127.0.0.1"):
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


def _answers_tls(port: int) -> bool:
    """Tell whether nginx answers HTTPS."""
    try:
        return _tls_request(port, "GET", "/healthz")[0] == 200
    except OSError:
        return False


def test_nginx_serves_the_api_over_tls_with_hsts(nginx):
    status, headers, body = _tls_request(nginx["https"], "GET", "/api/ice-servers")
    assert status == 200 and b'"source":"cloudflare"' in body
    assert headers["Strict-Transport-Security"].startswith("max-age=")


def test_nginx_stores_no_answer_even_under_a_cache_for_the_whole_box(nginx):
    answers = [_tls_request(nginx["https"], "GET", "/api/ice-servers") for _ in range(2)]
    assert [status for status, _, _ in answers] == [200, 200]
    assert {headers["Cache-Control"] for _, headers, _ in answers} == {"no-store"}
    assert not [path for path in nginx["cache"].rglob("*") if path.is_file()]


def test_nginx_own_answers_are_json_and_never_stored(nginx):
    # What nginx answers itself, without the app: no page of it may be cached either.
    oversized = {"X-Padding": "x" * (17 * 1024)}  # over large_client_header_buffers
    for method, path, headers, expected in (
        ("GET", "/metrics", {}, 404),
        ("POST", "/api/turn-credentials", {"Content-Length": str(1024 * 1024)}, 413),
        ("GET", "/api/ice-servers", oversized, 400),
    ):
        status, answer_headers, body = _tls_request(nginx["https"], method, path, headers=headers)
        assert status == expected and answer_headers["Cache-Control"] == "no-store", (path, status, answer_headers)
        assert json.loads(body)["status"] == expected
        assert answer_headers["Strict-Transport-Security"].startswith("max-age=")


def test_nginx_redirects_http_to_https(nginx):
    response = requests.get(f"http://127.0.0.1:{nginx['http']}/api/ice-servers", allow_redirects=False, timeout=5)
    assert response.status_code == 301 and response.headers["Location"].startswith("https://")


def test_nginx_refuses_a_large_body_before_the_app(nginx, tmp_path):
    status, _, body = _tls_request(
        nginx["https"], "POST", "/api/turn-credentials", body=b"x" * (1024 * 1024), headers={"Content-Type": "application/octet-stream"}
    )
    assert status == 413 and b'"status": 413' in body
    assert "POST /api/turn-credentials" not in (tmp_path / "host.log").read_text()


def test_app_sees_the_client_address_through_nginx_not_a_spoofed_one(nginx, tmp_path):
    status, _, _ = _tls_request(nginx["https"], "GET", "/api/ice-servers", headers={"X-Forwarded-For": "203.0.113.7"}, source="127.0.0.2")
    assert status == 200
    time.sleep(0.2)  # the access log line is written after the response
    lines = [line for line in (tmp_path / "host.log").read_text().splitlines() if '"GET /api/ice-servers' in line]
    assert lines and lines[-1].startswith("127.0.0.2 ")  # nginx's view of the client, via X-Forwarded-For


def test_nginx_keeps_metrics_off_the_internet(nginx):
    assert _tls_request(nginx["https"], "GET", "/metrics")[0] == 404


def test_nginx_passes_a_16_kib_header_line_to_the_app(nginx):
    large = "Bearer " + "x" * (12 * 1024)  # a large JWT: over nginx's and gunicorn's 8 KiB defaults
    status, headers, _ = _tls_request(nginx["https"], "GET", "/api/ice-servers", headers={"Authorization": large})
    assert status == 200 and headers["Content-Type"] == "application/json"  # open mode: the app answered
