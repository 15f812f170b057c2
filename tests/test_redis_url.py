"""The REDIS_URL grammar, and the store's and the limiter's settings built from one parsed value."""

import pytest

from app.config import ConfigError, load_settings
from app.config.redis_url import RedisTarget, parse_redis_url

SECRET = "s3cret-pass@word"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", RedisTarget("single", False, (("127.0.0.1", 6379),))),
        ("rediss://cache.example.test/2", RedisTarget("single", True, (("cache.example.test", 6379),), db=2)),
        ("unix:///run/redis/redis.sock?db=3", RedisTarget("unix", path="/run/redis/redis.sock", db=3)),
        (
            "redis+sentinel://s1.example.test,s2.example.test:26380/mymaster/1",
            RedisTarget("sentinel", False, (("s1.example.test", 26379), ("s2.example.test", 26380)), db=1, service="mymaster"),
        ),
        ("rediss+cluster://[::1]:7000,10.0.0.2:7001", RedisTarget("cluster", True, (("::1", 7000), ("10.0.0.2", 7001)))),
    ],
)
def test_every_form_parses(url, expected):
    assert parse_redis_url(url) == expected


def test_user_and_password_in_every_form_are_percent_decoded_and_hidden():
    for url in (
        "rediss://ice:s3cret-pass%40word@h:6380/0",
        "unix://ice:s3cret-pass%40word@/run/redis.sock",
        "redis+sentinel://ice:s3cret-pass%40word@h:26379/svc",
        "redis+cluster://ice:s3cret-pass%40word@h:7000",
    ):
        target = parse_redis_url(url)
        assert (target.username, target.password) == ("ice", SECRET)
        assert SECRET not in repr(target) and SECRET not in target.describe()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h:26379,h2:26379", "REDIS_URL names no Sentinel service"),
        ("redis+cluster://h:7000/1", "REDIS_URL names database 1, but Redis Cluster has only database 0"),
        ("memcached://h:11211", "REDIS_URL must start with one of"),
        ("redis://h1,h2", "REDIS_URL names several hosts"),
        (f"redis://:{SECRET}@h/zero", "REDIS_URL's database must be a number"),
        (f"redis://:{SECRET}@h:99999/0", "REDIS_URL has port 99999"),
        (f"redis://:{SECRET}@h/0?ssl_cert_reqs=none", "REDIS_URL takes no \\?options"),
    ],
)
def test_malformed_values_stop_the_start_naming_redis_url_without_the_password(url, message):
    with pytest.raises(ConfigError, match=message) as excinfo:
        load_settings({"REDIS_URL": url})
    assert "\n" not in str(excinfo.value) and SECRET not in str(excinfo.value) and "pass" not in str(excinfo.value)


def test_ca_file_and_sentinel_password_need_their_forms(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="REDIS_CA_FILE is set but REDIS_URL does not use TLS"):
        load_settings({"REDIS_URL": "redis://h/0", "REDIS_CA_FILE": str(ca)})
    with pytest.raises(ConfigError, match="REDIS_CA_FILE names no readable file"):
        load_settings({"REDIS_URL": "rediss://h/0", "REDIS_CA_FILE": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigError, match="REDIS_SENTINEL_PASSWORD is set but REDIS_URL is not redis\\+sentinel"):
        load_settings({"REDIS_URL": "redis://h/0", "REDIS_SENTINEL_PASSWORD": "x"})
    settings = load_settings({"REDIS_URL": "rediss+sentinel://h:26379/svc", "REDIS_CA_FILE": str(ca), "REDIS_SENTINEL_PASSWORD": "sp"})
    assert settings.redis.ca_file == str(ca) and settings.redis.sentinel_password == "sp" and "sp" not in repr(settings.redis)
