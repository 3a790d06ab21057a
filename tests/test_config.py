"""Settings from ``KR_*``: bad values are named and never echoed; production is strict."""

from __future__ import annotations

import base64
import multiprocessing
import os
import secrets
import stat
from pathlib import Path

import pytest

from kindrobots.config import (
    DEV_KEYS_FILE,
    KEY_BYTES,
    ConfigError,
    format_keys,
    generate_audit_key,
    generate_key,
    load_settings,
)

# Looks like a secret and is easy to find in a message that should not hold it.
SECRET = "sk_live_" + "Q7vX2mN9pL4kR8tW"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No KR_* variable and no ``.env`` from the machine running the tests."""
    for name in [name for name in os.environ if name.startswith("KR_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def b64(material: bytes) -> str:
    return base64.b64encode(material).decode()


def config_error(monkeypatch: pytest.MonkeyPatch, **variables: str) -> str:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    # Nothing reaches an operator through the chained exception either.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    return message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KR_PORT", f"abc{SECRET}"),
        ("KR_PORT", "99999"),
        ("KR_ENV", f"staging-{SECRET}"),
        ("KR_SIGNING_KEYS", SECRET),  # no kid
        ("KR_SIGNING_KEYS", f"sig-1:{b64(SECRET.encode())}"),  # wrong length
        ("KR_SIGNING_KEYS", f"{b64(bytes(range(KEY_BYTES)))}:sig-1"),  # halves swapped
        ("KR_SIGNING_KEYS", f"{SECRET}:{SECRET}"),
        ("KR_SIGNING_KEYS", f"sig-1:{b64(SECRET.encode() * 2)[:43]}!!"),  # not base64
        ("KR_ENCRYPTION_KEYS", f"enc:{b64(bytes(range(16)))},{SECRET}"),
        ("KR_PUBLIC_URL", f"ftp://{SECRET}.example.com"),
        ("KR_PUBLIC_URL", "not a url"),
        ("KR_DATABASE_URL", f"mysql://admin:{SECRET}@db.example.com/kr"),
        ("KR_TRUSTED_PROXIES", f"10.0.0.1,not-an-ip-{SECRET}"),
        ("KR_DASHBOARD_ORIGINS", f"https://app.example.com/{SECRET}"),
        ("KR_REDIS_URL", f"http://:{SECRET}@cache.example.com"),
        ("KR_LOG_LEVEL", f"loud{SECRET}"),
        ("KR_AUDIT_KEY", b64(SECRET.encode())),  # too short
        ("KR_AUDIT_KEY", f"{b64(SECRET.encode() * 3)}!!"),  # not base64
    ],
)
def test_bad_value_names_the_variable_and_not_the_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    message = config_error(monkeypatch, **{name: value})
    assert name in message, message
    assert SECRET not in message, message
    for part in value.replace(",", ":").split(":"):
        if len(part) >= 8:
            assert part not in message, message


def test_duplicate_key_ids_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    twice = f"same:{b64(secrets.token_bytes(32))},same:{b64(secrets.token_bytes(32))}"
    message = config_error(monkeypatch, KR_SIGNING_KEYS=twice)
    assert "KR_SIGNING_KEYS" in message


def test_every_bad_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(
        monkeypatch, KR_PORT="abc", KR_PUBLIC_URL="ftp://x", KR_TRUSTED_PROXIES="nope"
    )
    for name in ("KR_PORT", "KR_PUBLIC_URL", "KR_TRUSTED_PROXIES"):
        assert name in message, message


def test_production_lists_every_missing_requirement(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    message = config_error(
        monkeypatch,
        KR_ENV="production",
        KR_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/kr.db",
        KR_PUBLIC_URL="http://kindrobots.example.com",
    )
    for name in (
        "KR_ENCRYPTION_KEYS",
        "KR_SIGNING_KEYS",
        "KR_AUDIT_KEY",
        "KR_DATABASE_URL",
        "KR_PUBLIC_URL",
        "KR_METRICS_TOKEN or KR_METRICS_PORT",
    ):
        assert name in message, message
    assert tmp_path.name not in message
    # It refused: no development keys were made up for it.
    assert not (tmp_path / ".kindrobots").exists()


@pytest.mark.parametrize(
    ("missing", "overrides"),
    [
        ("KR_SIGNING_KEYS", {"KR_SIGNING_KEYS": ""}),
        ("KR_ENCRYPTION_KEYS", {"KR_ENCRYPTION_KEYS": ""}),
        ("KR_AUDIT_KEY", {"KR_AUDIT_KEY": ""}),
        ("KR_DATABASE_URL", {"KR_DATABASE_URL": "sqlite+aiosqlite:///kr.db"}),
        ("KR_DATABASE_URL", {"KR_DATABASE_URL": ""}),
        ("KR_PUBLIC_URL", {"KR_PUBLIC_URL": "http://kindrobots.example.com"}),
    ],
)
def test_production_refuses_each_requirement_alone(
    monkeypatch: pytest.MonkeyPatch, missing: str, overrides: dict[str, str]
) -> None:
    complete = {
        "KR_ENV": "production",
        "KR_DATABASE_URL": "postgresql+asyncpg://kr:pw@db.example.com/kr",
        "KR_PUBLIC_URL": "https://kindrobots.example.com",
        "KR_SIGNING_KEYS": format_keys((generate_key("sig"),)),
        "KR_ENCRYPTION_KEYS": format_keys((generate_key("enc"),)),
        "KR_AUDIT_KEY": generate_audit_key(),
        "KR_METRICS_TOKEN": "metrics-token-for-tests",
    }
    message = config_error(monkeypatch, **{**complete, **overrides})
    others = {
        "KR_SIGNING_KEYS",
        "KR_ENCRYPTION_KEYS",
        "KR_AUDIT_KEY",
        "KR_DATABASE_URL",
        "KR_PUBLIC_URL",
    }
    assert missing in message, message
    for other in others - {missing}:
        assert other not in message, message


def test_complete_production_settings_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    signing, encryption = generate_key("sig"), generate_key("enc")
    monkeypatch.setenv("KR_ENV", "production")
    monkeypatch.setenv("KR_DATABASE_URL", "postgresql+asyncpg://kr:pw@db.example.com/kr")
    monkeypatch.setenv("KR_PUBLIC_URL", "https://kindrobots.example.com/")
    monkeypatch.setenv("KR_METRICS_PORT", "9100")
    monkeypatch.setenv("KR_SIGNING_KEYS", format_keys((signing,)))
    monkeypatch.setenv("KR_ENCRYPTION_KEYS", format_keys((encryption,)))
    audit_key = secrets.token_bytes(KEY_BYTES + 16)
    monkeypatch.setenv("KR_AUDIT_KEY", b64(audit_key))
    settings = load_settings()
    assert settings.is_production
    assert settings.audit_key == audit_key
    assert settings.signing_keys == (signing,)
    assert settings.encryption_keys == (encryption,)
    assert settings.public_url == "https://kindrobots.example.com"
    assert settings.json_logs and settings.secure_cookies
    assert not (tmp_path / ".kindrobots").exists()


def test_embedded_default(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.env == "development"
    assert settings.is_sqlite
    assert settings.database_url == "sqlite+aiosqlite:///.kindrobots/kindrobots.db"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.public_url == "http://localhost:8000"
    assert settings.dashboard_origins == ("http://localhost:3000",)
    assert settings.redis_url is None
    assert settings.signing_keys and settings.encryption_keys
    keys_file = tmp_path / ".kindrobots" / DEV_KEYS_FILE
    assert keys_file.is_file()


def test_development_keys_are_private_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = load_settings(data_dir=data_dir)
    keys_file = data_dir / DEV_KEYS_FILE
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert len(first.signing_keys[0].material) == KEY_BYTES
    assert first.signing_keys[0].material != first.encryption_keys[0].material
    content = keys_file.read_text()
    assert content.startswith("KR_ENCRYPTION_KEYS=") and "\nKR_SIGNING_KEYS=" in content

    second = load_settings(data_dir=data_dir)
    assert second.signing_keys == first.signing_keys
    assert second.encryption_keys == first.encryption_keys
    assert keys_file.read_text() == content

    # A different data directory is a different installation with its own keys.
    other = load_settings(data_dir=tmp_path / "other")
    assert other.signing_keys != first.signing_keys


def test_data_dir_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KR_DATA_DIR", str(tmp_path / "state"))
    settings = load_settings()
    assert (tmp_path / "state" / DEV_KEYS_FILE).is_file()
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path}/state/kindrobots.db"


def test_explicit_keys_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    stored = load_settings(data_dir=data_dir)
    signing = (generate_key("sig"), generate_key("old"))
    monkeypatch.setenv("KR_SIGNING_KEYS", format_keys(signing))
    settings = load_settings(data_dir=data_dir)
    assert settings.signing_keys == signing
    assert settings.signing_keys[0] == signing[0]  # the first signs
    assert settings.encryption_keys == stored.encryption_keys  # the other still comes from disk

    encryption = (generate_key("enc"),)
    monkeypatch.setenv("KR_ENCRYPTION_KEYS", format_keys(encryption))
    both = load_settings(data_dir=data_dir)
    assert (both.signing_keys, both.encryption_keys) == (signing, encryption)


def test_explicit_keys_create_no_key_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KR_SIGNING_KEYS", format_keys((generate_key("sig"),)))
    monkeypatch.setenv("KR_ENCRYPTION_KEYS", format_keys((generate_key("enc"),)))
    monkeypatch.setenv("KR_AUDIT_KEY", generate_audit_key())
    load_settings(data_dir=tmp_path / "data")
    assert not (tmp_path / "data" / DEV_KEYS_FILE).exists()


def test_damaged_key_file_is_named_not_printed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / DEV_KEYS_FILE).write_text(f"KR_ENCRYPTION_KEYS={SECRET}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(data_dir=data_dir)
    assert DEV_KEYS_FILE in str(caught.value)
    assert SECRET not in str(caught.value)


def test_dotenv_in_the_working_directory_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("KR_PORT=9123\nKR_HOST=0.0.0.0\n")
    settings = load_settings()
    assert (settings.host, settings.port) == ("0.0.0.0", 9123)  # noqa: S104
    monkeypatch.setenv("KR_PORT", "9124")
    assert load_settings().port == 9124  # the environment wins over the file


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KR_DASHBOARD_ORIGINS", "https://a.example.com, https://b.example.com:8443")
    monkeypatch.setenv("KR_TRUSTED_PROXIES", "10.0.0.1, 192.168.0.0/16,::1")
    monkeypatch.setenv("KR_OUTBOUND_ALLOW", "localhost:9999,api.example.com")
    settings = load_settings()
    assert settings.dashboard_origins == ("https://a.example.com", "https://b.example.com:8443")
    assert [str(network) for network in settings.trusted_proxies] == [
        "10.0.0.1/32",
        "192.168.0.0/16",
        "::1/128",
    ]
    assert settings.outbound_allow == ("localhost:9999", "api.example.com")


def test_keys_in_standard_or_url_safe_base64(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = secrets.token_bytes(KEY_BYTES), secrets.token_bytes(KEY_BYTES)
    url_safe = base64.urlsafe_b64encode(second).decode().rstrip("=")
    monkeypatch.setenv("KR_SIGNING_KEYS", f"new:{b64(first)}, old:{url_safe}")
    settings = load_settings()
    assert [(key.kid, key.material) for key in settings.signing_keys] == [
        ("new", first),
        ("old", second),
    ]
    assert "material" not in repr(settings.signing_keys[0])
    assert b64(first) not in repr(settings)


def test_printing_settings_shows_no_secret(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        database_url="postgresql+asyncpg://app:db-password-123@db.example.com/kr",
        redis_url="redis://:redis-password-456@cache.example.com:6379/0",
        stripe_secret_key="sk_live_stripe_secret_789",
        stripe_webhook_secret="whsec_webhook_secret_0ab",
    )
    shown = repr(settings) + str(settings)
    for secret in ("db-password-123", "redis-password-456", "secret_789", "secret_0ab"):
        assert secret not in shown
    for key in settings.encryption_keys + settings.signing_keys:
        assert base64.b64encode(key.material).decode() not in shown


def test_two_processes_creating_development_keys_agree(tmp_path: Path) -> None:
    """Simultaneous first starts both end up with the one complete key file."""
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_dev_key_ids, [str(tmp_path)] * 8)
    assert len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keys.env"]


def _dev_key_ids(data_dir: str) -> tuple[str, str]:
    settings = load_settings(data_dir=Path(data_dir))
    return settings.encryption_keys[0].kid, settings.signing_keys[0].kid


def test_development_audit_key_is_kept_with_the_other_keys(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = load_settings(data_dir=data_dir)
    assert len(first.audit_key) == KEY_BYTES
    assert load_settings(data_dir=data_dir).audit_key == first.audit_key
    assert "KR_AUDIT_KEY=" in (data_dir / DEV_KEYS_FILE).read_text()
    assert first.audit_key.hex() not in repr(first)


def test_a_key_file_from_before_the_audit_key_gains_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / DEV_KEYS_FILE
    old = (
        f"KR_ENCRYPTION_KEYS={format_keys((generate_key('enc'),))}\n"
        f"KR_SIGNING_KEYS={format_keys((generate_key('sig'),))}\n"
    )
    path.write_text(old)
    path.chmod(0o600)
    settings = load_settings(data_dir=data_dir)
    assert len(settings.audit_key) == KEY_BYTES
    text = path.read_text()
    assert text.startswith(old) and text.count("KR_AUDIT_KEY=") == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_settings(data_dir=data_dir).audit_key == settings.audit_key
