"""Settings: defaults, both guides' names, and one clear line for every bad value."""

import pytest

from app.config import ConfigError, load_settings

KEYS = {"CLOUDFLARE_TURN_TOKEN_ID": "test-key-id", "CLOUDFLARE_API_TOKEN": "test-api-token"}


def test_defaults_are_production_values():
    settings = load_settings({})
    assert (settings.credential_ttl, settings.cache_ttl) == (86400, 82800)
    assert settings.api_base == "https://rtc.live.cloudflare.com/v1"
    assert settings.redis_url is None and not settings.cloudflare_configured
    assert settings.stun_urls == ("stun:stun.cloudflare.com:3478",)


def test_second_guide_names_configure_cloudflare():
    settings = load_settings(KEYS)
    assert (settings.turn_key_id, settings.api_token) == ("test-key-id", "test-api-token")


def test_first_guide_names_are_aliases():
    settings = load_settings({"TURN_KEY_ID": "test-key-id", "TURN_KEY_API_TOKEN": "test-api-token"})
    assert settings.cloudflare_configured


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
    monkeypatch.delenv("TURN_CREDENTIAL_TTL", raising=False)
    settings = load_settings()
    assert (settings.credential_ttl, settings.cache_ttl) == (3600, 600)
