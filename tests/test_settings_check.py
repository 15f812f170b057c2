"""python -m app.settings_check: what an operator sees holds no secret; the gunicorn master gets the values on a pipe."""

import json
import os
import subprocess
import sys

from tests.servers import ROOT, clean_environ

SECRETS = {
    "CLOUDFLARE_API_TOKEN": "test-api-token-not-a-secret",
    "ICE_ACCESS_SECRET": "test-access-secret-long-enough",
    "REDIS_URL": "redis://:test-redis-password@127.0.0.1:6379/0",
    "TURN_SERVERS": '[{"urls": ["turn:static.example.test:3478"], "username": "static-user", "credential": "static-password"}]',
}


def write_env(tmp_path):
    env_file = tmp_path / ".env"
    lines = {"CLOUDFLARE_TURN_TOKEN_ID": "test-key-id", "ICE_ACCESS_MODE": "token", **SECRETS}
    env_file.write_text("".join(f"{name}='{value}'\n" for name, value in lines.items()))
    env_file.chmod(0o600)
    return env_file


def check(env_file, *args, **kwargs):
    """Run ``python -m app.settings_check ARGS`` on ``env_file``."""
    environ = {**clean_environ(), "ICE_ENV_FILE": str(env_file)}
    command = [sys.executable, "-m", "app.settings_check", *args]
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, **kwargs)


def test_the_operators_view_lists_the_values_with_every_secret_redacted(tmp_path):
    env_file = write_env(tmp_path)
    run = check(env_file)
    assert run.returncode == 0, run.stderr
    assert "CLOUDFLARE_TURN_TOKEN_ID=test-key-id" in run.stdout and "ICE_ACCESS_MODE=token" in run.stdout
    for name, value in SECRETS.items():
        assert f"{name}=(secret, not shown)" in run.stdout
        assert value not in run.stdout + run.stderr
    assert "test-redis-password" not in run.stdout and "static-password" not in run.stdout


def test_the_master_gets_the_values_on_its_own_pipe_and_nothing_on_stdout(tmp_path):
    env_file = write_env(tmp_path)
    read_fd, write_fd = os.pipe()
    run = check(env_file, "--handover-fd", str(write_fd), pass_fds=(write_fd,))
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        handed = json.load(pipe)
    assert run.returncode == 0 and run.stdout == "" and run.stderr == ""
    assert handed["values"]["CLOUDFLARE_API_TOKEN"] == SECRETS["CLOUDFLARE_API_TOKEN"] and handed["file"] == str(env_file)


def test_a_bad_setting_is_one_line_naming_it_and_no_secret(tmp_path):
    env_file = write_env(tmp_path)
    env_file.write_text(env_file.read_text() + "ICE_CACHE_TTL=90000\n")
    run = check(env_file)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == [
        "ice-servers: configuration error: ICE_CACHE_TTL (90000) must be less than TURN_CREDENTIAL_TTL (86400), "
        "so that every credential served has validity left"
    ]


def test_a_urls_user_and_password_are_never_shown():
    from app.settings_check import known_names, shown

    assert shown("CLOUDFLARE_API_BASE", "https://proxy-user:test-proxy-password@proxy.example.test", known_names()) == (
        "https://(not shown)@proxy.example.test"
    )
    assert shown("CLOUDFLARE_API_TOKEN_FILE", "/run/secrets/cloudflare", known_names()) == "/run/secrets/cloudflare"


def test_the_nginx_limit_check_says_one_line_when_the_site_counts_otherwise_and_nothing_when_alike(tmp_path):
    env_file = write_env(tmp_path)
    env_file.write_text(env_file.read_text() + "ICE_RATE_LIMIT='100 per minute'\n")
    shipped = "zone=ice_servers_per_address burst=599 nodelay"
    differs = check(env_file, "--nginx-limit", "600r/m", shipped)
    assert differs.returncode == 0 and differs.stderr == ""
    assert differs.stdout.splitlines() == [
        "the nginx site counts rate=600r/m burst=599 nodelay in front of its cache, but ICE_RATE_LIMIT=100 per minute means "
        "rate=100r/m burst=99 nodelay: edit limit_req_zone and both limit_req lines of ice-servers.conf, then reload nginx"
    ]
    alike = check(env_file, "--nginx-limit", "100r/m", "zone=ice_servers_per_address burst=99 nodelay")
    assert alike.returncode == 0 and alike.stdout == ""
    assert not any(secret in differs.stdout + alike.stdout for secret in SECRETS.values())
