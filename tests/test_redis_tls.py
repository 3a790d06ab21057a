"""Production talks to a Redis off this machine over TLS only (as to PostgreSQL)."""

from __future__ import annotations

import pytest

from kindrobots.config import (
    ConfigError,
    format_keys,
    generate_audit_key,
    generate_key,
    load_settings,
)

SECRET = "s3cr3t-redis-pw"


def production(redis_url: str) -> dict[str, object]:
    return {
        "env": "production",
        "metrics_port": 9100,
        "database_url": "postgresql+asyncpg://kr:pw@db.example.com/kr",
        "public_url": "https://kindrobots.example.com",
        "signing_keys": format_keys((generate_key("sig"),)),
        "encryption_keys": format_keys((generate_key("enc"),)),
        "audit_key": generate_audit_key(),
        "redis_url": redis_url,
    }


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@cache.example.com:6379/0",
        f"redis://default:{SECRET}@10.0.0.7/0",
        "redis://cache.internal",
        "redis://[2001:db8::1]:6379",
    ],
)
def test_production_refuses_plain_redis_off_loopback(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**production(url))
    message = str(caught.value)
    assert "KR_REDIS_URL" in message and "rediss://" in message
    assert SECRET not in message and "example.com" not in message and "10.0.0.7" not in message


@pytest.mark.parametrize(
    "url",
    [
        f"rediss://:{SECRET}@cache.example.com:6380/0",
        "redis://127.0.0.1:6379/0",
        "redis://localhost:6379",
        "redis://[::1]:6379",
        "unix:///run/redis.sock",
    ],
)
def test_production_accepts_tls_or_loopback_redis(url: str) -> None:
    assert load_settings(**production(url)).redis_url == url


def test_development_keeps_plain_redis() -> None:
    settings = load_settings(
        env="development",
        redis_url="redis://cache.example.com:6379/0",
        database_url="sqlite+aiosqlite:///:memory:",
        signing_keys=format_keys((generate_key("sig"),)),
        encryption_keys=format_keys((generate_key("enc"),)),
    )
    assert settings.redis_url == "redis://cache.example.com:6379/0"
