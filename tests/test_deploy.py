"""Every artefact in deploy/, for real.

deploy.sh from a fresh clone into releases (each checked before it is switched to), the refusals
that keep secrets off the web (an APP_DIR under an nginx web root, the web server's user), pm2 from
npm, the systemd unit, and Debian's nginx (its stock default site beside ours) with a self-signed
certificate in front of gunicorn.
"""

import json
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import requests

from tests.cloudflare_stub import API_TOKEN
from tests.deployments import PM2_BIN, TEST_APP_USER, app_user, deploy, deployment_dir, fresh_clone, release
from tests.nginx_site import NGINX, KeptAlive, NginxSite, stock_default_site, tls_request
from tests.servers import ROOT, app_env, clean_environ, free_port, wait_until

# One worker runs the tests that share this module fixture (make test runs them in parallel).
pytestmark = [pytest.mark.xdist_group("deploy"), pytest.mark.deploy]

FAKE_ENV = b"# test .env: fake values only\nICE_LOG_LEVEL=INFO\nCLOUDFLARE_API_TOKEN_NOTE='not-a-real-token-value'\n"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Deploy a fresh clone into an APP_DIR whose .env has mode 644; return (source, app_dir, the first run)."""
    source = tmp_path_factory.mktemp("deploy") / "src"
    fresh_clone(source)
    app_dir = deployment_dir("deploy") / "opt"
    app_dir.mkdir()
    (app_dir / ".env").write_bytes(FAKE_ENV)
    (app_dir / ".env").chmod(0o644)
    first = deploy(source, app_dir)
    assert first.returncode == 0, first.stderr
    yield source, app_dir, first
    shutil.rmtree(app_dir.parent, ignore_errors=True)


def test_deploy_builds_a_release_with_its_own_venv_and_keeps_env_byte_for_byte(deployed):
    _, app_dir, first = deployed
    current = release(app_dir)
    assert current.parent == app_dir / "releases" and (current / ".venv" / "bin" / "gunicorn").exists()
    assert (current / ".env").resolve() == app_dir / ".env"  # flask commands in current/ read the deployment's .env
    assert (app_dir / ".env").read_bytes() == FAKE_ENV
    env_stat = (app_dir / ".env").stat()
    assert stat.S_IMODE(env_stat.st_mode) == 0o600
    assert pwd.getpwuid(env_stat.st_uid).pw_name == app_user()
    if os.geteuid() == 0:  # the code is root's: the service may read it, not change it
        assert (current / "app" / "__init__.py").stat().st_uid == 0 and stat.S_IMODE((current / "app").stat().st_mode) == 0o755
    assert "not-a-real-token-value" not in first.stdout + first.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a system user needs root (CI runs as root)")
def test_deploy_creates_a_system_user_of_its_own_for_the_service(deployed):
    entry = pwd.getpwnam(TEST_APP_USER)
    assert entry.pw_uid < 1000 and entry.pw_shell == "/usr/sbin/nologin"


def test_deploy_again_builds_a_new_release_and_keeps_the_last_one_for_rollback(deployed):
    source, app_dir, _ = deployed
    first = release(app_dir)
    again = deploy(source, app_dir)
    assert again.returncode == 0, again.stderr
    second = release(app_dir)
    assert second != first and release(app_dir, "previous") == first
    assert (app_dir / ".env").read_bytes() == FAKE_ENV and stat.S_IMODE((app_dir / ".env").stat().st_mode) == 0o600

    def frozen(at):
        return subprocess.run([at / ".venv/bin/python", "-m", "pip", "freeze"], capture_output=True, text=True).stdout

    assert frozen(second) == frozen(first) and "gunicorn==" in frozen(second)
    back = deploy(source, app_dir, "none", "--rollback")
    assert back.returncode == 0, back.stderr
    assert release(app_dir) == first and release(app_dir, "previous") == second


def test_deploy_without_env_warns_and_creates_none(deployed):
    source, app_dir, _ = deployed
    (app_dir / ".env").rename(app_dir / ".env.away")
    try:
        result = deploy(source, app_dir)
        assert result.returncode == 0, result.stderr
        assert f"no {app_dir}/.env" in result.stderr and not (app_dir / ".env").exists()
    finally:
        (app_dir / ".env.away").rename(app_dir / ".env")


def test_deploy_refuses_an_unknown_service_manager(deployed):
    source, app_dir, _ = deployed
    result = deploy(source, app_dir, manager="supervisor")
    assert result.returncode == 1
    assert result.stderr.strip() == "deploy: error: SERVICE_MANAGER must be pm2, systemd or none, not 'supervisor'"


def nginx_on_path(tmp_path, *sites: str) -> str:
    """Put an `nginx` on a PATH that runs Debian's nginx on a configuration of ``sites``; return that PATH."""
    (tmp_path / "sites").mkdir()
    for index, site in enumerate(sites):
        (tmp_path / "sites" / f"{index}.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"user www-data;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {tmp_path}/sites/*.conf;\n}}\n"
    )
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nginx").write_text(f'#!/bin/sh\nexec {NGINX} -p {tmp_path} -c {tmp_path}/nginx.conf "$@"\n')
    (tmp_path / "bin" / "nginx").chmod(0o755)
    return f"{tmp_path}/bin:{PM2_BIN}:{os.environ['PATH']}"


@pytest.mark.skipif(os.geteuid() != 0, reason="nginx -T reads its configuration as root")
def test_deploy_refuses_an_app_dir_under_an_enabled_nginx_web_root_and_changes_nothing(deployed, tmp_path):
    source, _, _ = deployed
    www = deployment_dir("www")
    try:
        site = f"server {{ listen 127.0.0.1:{free_port()}; root {www}/html; location /assets/ {{ alias {www}/assets/; }} }}\n"
        path = nginx_on_path(tmp_path, stock_default_site(), site)
        for app_dir, root in (
            ("/var/www/html", "/var/www/html"),  # the second guide's layout, on a stock Debian box
            ("/var/www/html/ice-servers", "/var/www/html"),
            (f"{www}/html/ice", f"{www}/html"),
            (f"{www}/assets/ice", f"{www}/assets/"),
        ):
            refused = deploy(source, Path(app_dir), path=path)
            assert refused.returncode == 1, refused.stdout
            assert refused.stderr.splitlines() == [
                f"deploy: error: APP_DIR {app_dir} is under {root}, the web root of an enabled nginx site: nginx would serve "
                "its .env and code. Use another APP_DIR (default /opt/ice-servers)"
            ]
            assert not Path(app_dir, "releases").exists() and not Path(app_dir, "current").exists()
        assert not Path(f"{www}/html").exists() and not Path(f"{www}/assets").exists()  # nothing was made
        allowed = deploy(source, www / "opt", path=path)
        assert allowed.returncode == 0, allowed.stderr
    finally:
        shutil.rmtree(www, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="nginx -T reads its configuration as root")
def test_deploy_warns_when_the_shipped_sites_limit_is_not_ice_rate_limits_twin(deployed, tmp_path):
    source, app_dir, _ = deployed
    site = NginxSite(tmp_path, free_port())  # the shipped site as installed (600r/m, burst 599), certificates of the test's
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nginx").write_text(f'#!/bin/sh\nexec {NGINX} -p {site.workdir} -c {site.workdir}/nginx.conf "$@"\n')
    (tmp_path / "bin" / "nginx").chmod(0o755)
    path = f"{tmp_path}/bin:{PM2_BIN}:{os.environ['PATH']}"
    try:
        (app_dir / ".env").write_bytes(FAKE_ENV + b"ICE_RATE_LIMIT=100 per minute\n")
        lowered = deploy(source, app_dir, path=path)
        assert lowered.returncode == 0, lowered.stderr  # a warning, not a refusal: the app's own limit still holds
        assert (
            "deploy: WARNING: the nginx site counts rate=600r/m burst=599 nodelay in front of its cache, but ICE_RATE_LIMIT=100 per "
            "minute means rate=100r/m burst=99 nodelay: edit limit_req_zone and both limit_req lines of ice-servers.conf, then reload nginx"
        ) in lowered.stderr.splitlines()
        (app_dir / ".env").write_bytes(FAKE_ENV + b"ICE_RATE_LIMIT=600 per 60 seconds\n")  # the default, written otherwise
        alike = deploy(source, app_dir, path=path)
        assert alike.returncode == 0 and "nginx site" not in alike.stderr, alike.stderr
    finally:
        (app_dir / ".env").write_bytes(FAKE_ENV)


def test_deploy_refuses_the_web_servers_user(deployed):
    source, app_dir, _ = deployed
    before = os.readlink(app_dir / "current")
    refused = deploy(source, app_dir, APP_USER="www-data")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "deploy: error: APP_USER www-data is the web server's user: nginx could then read .env. Use a user of its own (default ice-servers)"
    ]
    assert os.readlink(app_dir / "current") == before


def test_a_release_that_does_not_start_is_refused_and_removed(deployed):
    source, app_dir, _ = deployed
    before = sorted(os.listdir(app_dir / "releases"))
    current = os.readlink(app_dir / "current")
    broken = source / "app" / "__init__.py"
    good = broken.read_text()
    broken.write_text(good + "\ndef broken(:\n")
    try:
        refused = deploy(source, app_dir)
    finally:
        broken.write_text(good)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "deploy: error: ice-servers: the release does not start: SyntaxError: invalid syntax; nothing was switched, restarted or reloaded"
    )
    assert os.readlink(app_dir / "current") == current and sorted(os.listdir(app_dir / "releases")) == before


@pytest.fixture
def pm2(tmp_path):
    """Run pm2 (from npm, in .tools/) with its own home; kill its daemon afterwards."""
    home = tmp_path / "pm2-home"
    environ = {**clean_environ(), "PM2_HOME": str(home), "PATH": f"{PM2_BIN}:{os.environ['PATH']}"}

    def run(*args, **extra_env):
        return subprocess.run([PM2_BIN / "pm2", *args], env={**environ, **extra_env}, capture_output=True, text=True, timeout=60)

    yield run, environ
    run("kill")


def test_pm2_runs_the_current_release_as_its_own_user_and_restart_keeps_the_credential(deployed, pm2, cloudflare, redis_url):
    source, app_dir, _ = deployed
    run_pm2, pm2_environ = pm2
    port = free_port()
    env = {
        **app_env(cloudflare.base_url, redis_url),
        "PM2_HOME": pm2_environ["PM2_HOME"],
        "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --workers 4",
    }
    started = deploy(source, app_dir, "pm2", HEALTH_URL=f"http://127.0.0.1:{port}/healthz", **env)
    assert started.returncode == 0, started.stderr
    assert "healthy" in started.stdout
    master = int(run_pm2("pid", "ice-servers").stdout.strip().splitlines()[-1])
    uid = next(line.split()[1] for line in Path(f"/proc/{master}/status").read_text().splitlines() if line.startswith("Uid:"))
    assert pwd.getpwuid(int(uid)).pw_name == app_user()  # never root, never the web server's user
    assert Path(f"/proc/{master}/cwd").resolve() == release(app_dir)

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
        "User=ice-servers",
        "ExecStart=/opt/ice-servers/current/.venv/bin/python -m gunicorn -c gunicorn.conf.py --chdir /opt/ice-servers/current wsgi:app",
        "Environment=ICE_ENV_FILE=/opt/ice-servers/.env",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "After=network-online.target redis-server.service",
    ):
        assert needed in unit
    assert "Requires=ice-servers.socket" in unit
    # The paths stubbed to this checkout, which has a .venv, as deploy.sh does with APP_DIR; a user this box has.
    stubbed = unit.replace("/opt/ice-servers/current", str(ROOT)).replace("/opt/ice-servers", str(ROOT.parent))
    (tmp_path / "ice-servers.service").write_text(stubbed.replace("=ice-servers\n", "=daemon\n"))
    shutil.copy(ROOT / "deploy/ice-servers.socket", tmp_path / "ice-servers.socket")
    units = [str(tmp_path / "ice-servers.socket"), str(tmp_path / "ice-servers.service")]
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "ice-servers.s" not in result.stderr


@pytest.fixture
def nginx(tmp_path, start_host, cloudflare, redis_url):
    """Run Debian's nginx with the shipped site, both files, its stock default site beside it, and an operator's cache."""
    app = start_host(app_env(cloudflare.base_url, redis_url), args="--access-logfile -")
    site = NginxSite(tmp_path, app.port, default_site=True, operator_cache=True).start()
    yield {"http": site.http_port, "https": site.https_port, "default": site.default_port, "app": app, "cache": site.cache}
    site.stop()


def test_nginx_serves_the_api_over_tls_with_hsts(nginx):
    status, headers, body = tls_request(nginx["https"], "GET", "/api/ice-servers")
    assert status == 200 and b'"source":"cloudflare"' in body
    assert headers["Strict-Transport-Security"].startswith("max-age=")


def test_nginx_stores_no_answer_even_under_a_cache_for_the_whole_box(nginx):
    answers = [tls_request(nginx["https"], "GET", "/api/ice-servers") for _ in range(2)]
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
        status, answer_headers, body = tls_request(nginx["https"], method, path, headers=headers)
        assert status == expected and answer_headers["Cache-Control"] == "no-store", (path, status, answer_headers)
        assert json.loads(body)["status"] == expected
        assert answer_headers["Strict-Transport-Security"].startswith("max-age=")


def test_no_nginx_server_on_a_stock_debian_box_answers_any_file_of_the_deployment(nginx, deployed):
    # The box as the README sets it up: Debian's default site still enabled, ours beside it, APP_DIR outside every root.
    _, app_dir, _ = deployed
    files = [path for path in app_dir.rglob("*") if path.is_file() and ".venv" not in path.parts and "__pycache__" not in path.parts]
    assert (app_dir / ".env") in files and len(files) > 50
    # One kept-alive connection per server (a new TLS handshake per request made this the suite's slowest test).
    servers = [KeptAlive(nginx["default"], tls=False), KeptAlive(nginx["http"], tls=False), KeptAlive(nginx["https"])]
    try:
        for path in files:
            secret = path.read_bytes()
            relative = path.relative_to(app_dir).as_posix()
            for url in (f"/{relative}", f"/{app_dir.name}/{relative}", str(path), f"/../../..{path}", f"/%2e%2e/%2e%2e{path}"):
                for server in servers:
                    status, _, body = server.get(url)
                    assert status != 200 or (secret[:200] not in body), (url, server.port, status)
    finally:
        for server in servers:
            server.close()


def test_the_site_denies_dot_files_itself(nginx):
    for path in ("/.env", "/.git/config", "/app/.env", "/.well-known/../.env"):
        status, headers, body = tls_request(nginx["https"], "GET", path)
        assert status == 404 and json.loads(body) == {"error": "Not Found", "status": 404}, path
    assert "GET /.env" not in (Path(nginx["app"].log_path)).read_text()  # nginx answered, not the app


def test_nginx_redirects_http_to_https(nginx):
    response = requests.get(f"http://127.0.0.1:{nginx['http']}/api/ice-servers", allow_redirects=False, timeout=5)
    assert response.status_code == 301 and response.headers["Location"].startswith("https://")


def test_nginx_refuses_a_large_body_before_the_app(nginx, tmp_path):
    status, _, body = tls_request(
        nginx["https"], "POST", "/api/turn-credentials", body=b"x" * (1024 * 1024), headers={"Content-Type": "application/octet-stream"}
    )
    assert status == 413 and b'"status": 413' in body
    assert "POST /api/turn-credentials" not in (tmp_path / "host.log").read_text()


def test_app_sees_the_client_address_through_nginx_not_a_spoofed_one(nginx, tmp_path):
    status, _, _ = tls_request(nginx["https"], "GET", "/api/ice-servers", headers={"X-Forwarded-For": "203.0.113.7"}, source="127.0.0.2")
    assert status == 200

    def logged():  # the access log line is written after the response
        return [line for line in (tmp_path / "host.log").read_text().splitlines() if '"GET /api/ice-servers' in line]

    wait_until(logged, 5, what="the access log line")
    assert logged()[-1].startswith("127.0.0.2 ")  # nginx's view of the client, via X-Forwarded-For


def test_nginx_keeps_metrics_off_the_internet(nginx):
    assert tls_request(nginx["https"], "GET", "/metrics")[0] == 404


def test_nginx_passes_a_16_kib_header_line_to_the_app(nginx):
    large = "Bearer " + "x" * (12 * 1024)  # a large JWT: over nginx's and gunicorn's 8 KiB defaults
    status, headers, _ = tls_request(nginx["https"], "GET", "/api/ice-servers", headers={"Authorization": large})
    assert status == 200 and headers["Content-Type"] == "application/json"  # open mode: the app answered


def test_a_reload_that_does_not_take_is_reported_not_hidden(deployed, tmp_path):
    # Failed before: the smoke test asked /healthz, which the old workers still answered, and said "healthy".
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    source, app_dir, _ = deployed
    serving = os.readlink(app_dir / "current").split("/")[-1]

    class OldWorkers(BaseHTTPRequestHandler):  # a service whose reload never took: the old release answers
        def do_GET(self):  # noqa: N802 (http.server's naming)
            body = json.dumps({"release": serving, "status": "ok"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            """Stay quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), OldWorkers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "pm2").write_text('#!/bin/sh\n[ "$1" = pid ] && echo 4242\nexit 0\n')  # a running service that ignores SIGHUP
    (fake_bin / "pm2").chmod(0o755)
    try:
        health = f"http://127.0.0.1:{server.server_port}/healthz"
        result = deploy(source, app_dir, "pm2", path=f"{fake_bin}:{os.environ['PATH']}", HEALTH_URL=health, HEALTH_TIMEOUT="3")
    finally:
        server.shutdown()
    new = os.readlink(app_dir / "current").split("/")[-1]
    assert result.returncode == 1 and new != serving
    assert (
        f"the new release did not take: http://127.0.0.1:{server.server_port}/healthz still answers from {serving}, not {new}"
        in result.stderr
    )


def test_healthz_names_the_release_it_runs_to_the_box_only(deployed):
    source, app_dir, _ = deployed
    name = os.readlink(app_dir / "current").split("/")[-1]
    assert (release(app_dir) / "RELEASE").read_text().strip() == name
    check = "from app.web.views import release_name; print(release_name())"
    out = subprocess.run([release(app_dir) / ".venv/bin/python", "-c", check], cwd=release(app_dir), capture_output=True, text=True)
    assert out.stdout.strip() == name


def test_deploy_keeps_the_current_the_previous_and_keep_releases_others(deployed):
    # Failed before: the current and the previous release counted among KEEP_RELEASES, so fewer were kept than documented.
    source, app_dir, _ = deployed
    for _ in range(3):
        assert deploy(source, app_dir, KEEP_RELEASES="1").returncode == 0
    kept = sorted(os.listdir(app_dir / "releases"))
    assert len(kept) == 3
    assert {os.readlink(app_dir / "current").split("/")[-1], os.readlink(app_dir / "previous").split("/")[-1]} <= set(kept)


def test_deploy_refuses_a_keep_releases_that_is_not_a_number_before_anything_changes(deployed):
    source, app_dir, _ = deployed
    before = os.readlink(app_dir / "current")
    refused = deploy(source, app_dir, KEEP_RELEASES="-5")
    assert refused.returncode == 1 and "KEEP_RELEASES must be a whole number" in refused.stderr
    assert os.readlink(app_dir / "current") == before
