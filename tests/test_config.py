"""Settings: defaults, both guides' names, and one clear line for every bad value."""

import pytest

from app.config import ConfigError, load_settings

KEYS = {"CLOUDFLARE_TURN_TOKEN_ID": "test-key-id", "CLOUDFLARE_API_TOKEN": "test-api-token"}
SECRET = {"TURN_SHARED_SECRET": "test-turn-secret", "TURN_URLS": "turn:own.example.test:3478, turn:own.example.test:53"}


def test_defaults_are_production_values():
    settings = load_settings({})
    assert (settings.credential_ttl, settings.cache_ttl) == (86400, 82800)
    assert settings.api_base == "https://rtc.live.cloudflare.com/v1"
    assert settings.redis_url is None and settings.providers == ()
    assert settings.stun_urls == ("stun:stun.cloudflare.com:3478",)


def test_second_guide_names_configure_cloudflare():
    settings = load_settings(KEYS)
    assert (settings.turn_key_id, settings.api_token) == ("test-key-id", "test-api-token")


def test_first_guide_names_are_aliases():
    settings = load_settings({"TURN_KEY_ID": "test-key-id", "TURN_KEY_API_TOKEN": "test-api-token"})
    assert settings.providers == ("cloudflare",)


def test_api_token_never_in_repr():
    assert "test-api-token" not in repr(load_settings(KEYS))


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"CLOUDFLARE_TURN_TOKEN_ID": "test-key-id"}, "CLOUDFLARE_API_TOKEN"),
        ({"TURN_KEY_API_TOKEN": "test-api-token"}, "CLOUDFLARE_TURN_TOKEN_ID"),
        ({**KEYS, "TURN_KEY_ID": "other-key-id"}, "TURN_KEY_ID"),
        ({"TURN_CREDENTIAL_TTL": "a day"}, "TURN_CREDENTIAL_TTL"),
        ({"TURN_CREDENTIAL_TTL": "172801"}, "TURN_CREDENTIAL_TTL"),
        ({"TURN_CREDENTIAL_TTL": "0"}, "TURN_CREDENTIAL_TTL"),
        ({"ICE_CACHE_TTL": "86400"}, "ICE_CACHE_TTL"),
        ({"TURN_CREDENTIAL_TTL": "24"}, "ICE_CACHE_TTL"),
        ({"ICE_CACHE_TTL": "-5"}, "ICE_CACHE_TTL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"CLOUDFLARE_API_BASE": "ftp://example.test"}, "CLOUDFLARE_API_BASE"),
        ({"CORS_ORIGINS": "*"}, "CORS_ORIGINS"),
        ({"CORS_ORIGINS": "app.example.test"}, "CORS_ORIGINS"),
        ({"TURN_SERVERS": "[{"}, "TURN_SERVERS"),
        ({"TURN_SERVERS": '{"urls": 5}'}, "TURN_SERVERS"),
        ({"TURN_SERVERS": '[{"urls": "http://example.test"}]'}, "TURN_SERVERS"),
        ({"TURN_SERVERS": '[{"urls": "turn:t.example.test", "username": "u"}]'}, "TURN_SERVERS"),
        ({"STUN_URLS": "turn:t.example.test"}, "STUN_URLS"),
        ({"ICE_LOG_LEVEL": "LOUD"}, "ICE_LOG_LEVEL"),
        ({"ICE_PROXY_HOPS": "many"}, "ICE_PROXY_HOPS"),
        ({"ICE_DEMO": "maybe"}, "ICE_DEMO"),
        ({"ICE_RATE_LIMIT": "lots"}, "ICE_RATE_LIMIT"),
        ({"ICE_ACCESS_MODE": "secret"}, "ICE_ACCESS_MODE"),
        ({"ICE_ACCESS_MODE": "token"}, "ICE_ACCESS_SECRET"),
        ({"ICE_ACCESS_MODE": "token", "ICE_ACCESS_SECRET": "short"}, "ICE_ACCESS_SECRET"),
        ({"ICE_ACCESS_MODE": "origin"}, "CORS_ORIGINS"),
        ({"ICE_METRICS_ALLOW": "10.0.0.0/33"}, "ICE_METRICS_ALLOW"),
        ({"TURN_SHARED_SECRET": "test-turn-secret"}, "TURN_URLS"),
        ({"TURN_URLS": "turn:own.example.test"}, "TURN_SHARED_SECRET"),
        ({**SECRET, "TURN_SHARED_SECRET_FILE": "/nonexistent"}, "TURN_SHARED_SECRET_FILE"),
        ({"TURN_SHARED_SECRET_FILE": "/nonexistent", "TURN_URLS": "turn:own.example.test"}, "TURN_SHARED_SECRET_FILE"),
        ({**SECRET, "TURN_URLS": "stun:own.example.test"}, "TURN_URLS"),
        ({**SECRET, "TURN_URLS": "turn:own.example.test:53"}, "TURN_URLS"),
        ({**SECRET, "TURN_URLS": "http://own.example.test"}, "TURN_URLS"),
        ({**SECRET, "ICE_PROVIDERS": "cloudflare"}, "ICE_PROVIDERS"),
        ({**SECRET, "ICE_PROVIDERS": "twilio"}, "ICE_PROVIDERS"),
        ({**SECRET, "ICE_PROVIDERS": "turn-secret,turn-secret"}, "ICE_PROVIDERS"),
        ({"ICE_PROXY_HOPS": "9"}, "ICE_PROXY_HOPS"),
    ],
)
def test_invalid_setting_is_refused_naming_the_variable(environ, named):
    with pytest.raises(ConfigError) as excinfo:
        load_settings(environ)
    message = str(excinfo.value)
    assert named in message and "\n" not in message


def test_short_ttls_are_accepted():
    settings = load_settings({"TURN_CREDENTIAL_TTL": "24", "ICE_CACHE_TTL": "12"})
    assert (settings.credential_ttl, settings.cache_ttl) == (24, 12)


def test_turn_servers_are_parsed_and_port_53_dropped():
    settings = load_settings(
        {"TURN_SERVERS": '[{"urls": ["turn:t.example.test:53", "turn:t.example.test:3478"], "username": "u", "credential": "c"}]'}
    )
    assert settings.turn_servers == ({"urls": ["turn:t.example.test:3478"], "username": "u", "credential": "c"},)


def test_lists_are_split_on_commas():
    settings = load_settings(
        {"CORS_ORIGINS": "https://a.example.test, http://localhost:3000/", "STUN_URLS": "stun:a.example.test:3478,stun:b.example.test"}
    )
    assert settings.cors_origins == ("https://a.example.test", "http://localhost:3000")
    assert settings.stun_urls == ("stun:a.example.test:3478", "stun:b.example.test")


def test_dotenv_is_read_and_the_real_environment_wins(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("TURN_CREDENTIAL_TTL=3600\nICE_CACHE_TTL=1800\n")
    monkeypatch.setenv("ICE_ENV_FILE", str(env_file))
    monkeypatch.setenv("ICE_CACHE_TTL", "600")
    monkeypatch.setenv("TURN_CREDENTIAL_TTL", "unset")  # so that monkeypatch removes what .env will set...
    monkeypatch.delenv("TURN_CREDENTIAL_TTL")  # ...instead of leaking it into later tests
    settings = load_settings()
    assert (settings.credential_ttl, settings.cache_ttl) == (3600, 600)


def test_an_env_file_this_user_cannot_read_is_one_line_naming_it(tmp_path, monkeypatch):
    # As an admin command run as root's neighbour on the one-box layout, where .env is 0600 and the service user's.
    env_file = tmp_path / ".env"
    env_file.write_text("ICE_CACHE_TTL=1800\n")
    monkeypatch.setenv("ICE_ENV_FILE", str(env_file))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(env_file))

    monkeypatch.setattr("app.config.load_dotenv", denied)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert str(refused.value) == f"{env_file} (ICE_ENV_FILE) cannot be read: Permission denied; run the command as the service's user"


def test_both_providers_default_to_cloudflare_first():
    settings = load_settings({**KEYS, **SECRET})
    assert settings.providers == ("cloudflare", "turn-secret")
    assert settings.turn_urls == ("turn:own.example.test:3478",)  # port 53 dropped
    assert "test-turn-secret" not in repr(settings)


def test_provider_order_is_the_operators():
    assert load_settings({**KEYS, **SECRET, "ICE_PROVIDERS": "turn-secret, cloudflare"}).providers == ("turn-secret", "cloudflare")
    assert load_settings({**KEYS, **SECRET, "ICE_PROVIDERS": "turn-secret"}).providers == ("turn-secret",)


def test_shared_secret_can_come_from_a_file(tmp_path):
    secret_file = tmp_path / "turn-secret"
    secret_file.write_text("test-turn-secret-from-file\n")
    settings = load_settings({"TURN_SHARED_SECRET_FILE": str(secret_file), "TURN_URLS": "turn:own.example.test"})
    assert settings.turn_shared_secret == "test-turn-secret-from-file" and settings.providers == ("turn-secret",)


def test_demo_is_off_unless_enabled():
    assert not load_settings({}).demo
    assert load_settings({"ICE_DEMO": "1"}).demo and load_settings({"ICE_DEMO": "true"}).demo
    assert not load_settings({"ICE_DEMO": "0"}).demo


def test_rate_limit_defaults_on_and_zero_disables_it():
    assert load_settings({}).rate_limit == "600 per minute"
    assert load_settings({"ICE_RATE_LIMIT": "30 per second; 600 per minute"}).rate_limit == "30 per second; 600 per minute"
    assert load_settings({"ICE_RATE_LIMIT": "0"}).rate_limit is None


def test_access_modes_and_metrics_allowlist():
    settings = load_settings({"ICE_ACCESS_MODE": "token", "ICE_ACCESS_SECRET": "test-access-secret-long-enough"})
    assert settings.access_mode == "token" and "test-access-secret" not in repr(settings)
    assert load_settings({}).access_mode == "open" and load_settings({}).metrics_allow == ("127.0.0.0/8", "::1/128")
    assert load_settings({"ICE_METRICS_ALLOW": "10.0.0.5, 192.0.2.0/24"}).metrics_allow == ("10.0.0.5", "192.0.2.0/24")


@pytest.mark.parametrize("value", ["\u0663\u0666\u0660\u0660", "6_0", "\u00b2", "60s", "+60"])
def test_numbers_take_ascii_digits_only(value):
    # int() takes "٣٦٠٠", "6_0" and "+60": a setting must read as what it looks like to the operator.
    with pytest.raises(ConfigError, match="TURN_CREDENTIAL_TTL must be a whole number of seconds") as refused:
        load_settings({"TURN_CREDENTIAL_TTL": value})
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("name", ["CLOUDFLARE_API_BASE", "CLOUDFLARE_GRAPHQL_URL"])
def test_clear_text_endpoints_are_refused_unless_on_loopback(name):
    # A typo would send the API token in clear text to whoever is on the path.
    ceiling = {**KEYS, "ICE_EGRESS_LIMIT_GB": "1", "CLOUDFLARE_ACCOUNT_ID": "test-account", "CLOUDFLARE_ANALYTICS_TOKEN": "test-token"}
    for url in ("http://rtc.live.cloudflare.com/v1", "http://10.0.0.5/v1", "http://[2001:db8::1]/v1", "ftp://x.example.test/"):
        with pytest.raises(ConfigError, match=f"{name} must be") as refused:
            load_settings({**ceiling, name: url})
        assert url not in str(refused.value)
    for url in (
        "http://127.0.0.1:9000/v1",
        "http://127.0.0.2:9000/v1",
        "http://[::1]:9000/v1",
        "http://localhost:9000/v1",
        "https://x.example.test/v1",
    ):
        settings = load_settings({**ceiling, name: url})
        assert (settings.api_base if name == "CLOUDFLARE_API_BASE" else settings.graphql_url) == url


@pytest.mark.parametrize(
    ("name", "extra", "field"),
    [
        ("CLOUDFLARE_API_TOKEN", {"CLOUDFLARE_TURN_TOKEN_ID": "test-key-id"}, "api_token"),
        ("TURN_KEY_API_TOKEN", {"CLOUDFLARE_TURN_TOKEN_ID": "test-key-id"}, "api_token"),
        ("TURN_SHARED_SECRET", {"TURN_URLS": "turn:own.example.test"}, "turn_shared_secret"),
        ("ICE_ACCESS_SECRET", {"ICE_ACCESS_MODE": "token"}, "access_secret"),
        ("ICE_JWT_SECRET", {"ICE_ACCESS_MODE": "jwt"}, "jwt_secret"),
        ("ICE_USER_ID_SECRET", {"ICE_ACCESS_MODE": "jwt", "ICE_JWT_SECRET": "x" * 40, "ICE_CREDENTIAL_SCOPE": "user"}, "user_id_secret"),
        ("REDIS_URL", {}, "redis_url"),
        ("REDIS_SENTINEL_PASSWORD", {"REDIS_URL": "redis+sentinel://127.0.0.1:26379/ice"}, "redis"),
    ],
)
def test_every_secret_can_come_from_a_file(tmp_path, name, extra, field):
    value = "redis://:test-redis-password@127.0.0.1:6379/0" if name == "REDIS_URL" else "test-secret-from-a-file-0123456789abcdef"
    path = tmp_path / "secret"
    path.write_text(value + "\n")
    settings = load_settings({**extra, f"{name}_FILE": str(path)})
    held = getattr(settings, field)
    assert (held.sentinel_password if name == "REDIS_SENTINEL_PASSWORD" else held) == value
    with pytest.raises(ConfigError, match=f"{name} and {name}_FILE are both set: keep one"):
        load_settings({**extra, name: value, f"{name}_FILE": str(path)})
    with pytest.raises(ConfigError, match=f"{name}_FILE cannot be read") as refused:
        load_settings({**extra, f"{name}_FILE": str(tmp_path / "missing")})
    assert value not in str(refused.value)
