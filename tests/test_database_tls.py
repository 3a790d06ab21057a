"""Server-to-database traffic is encrypted in production (SECURITY_POLICY 3.2).

The local PostgreSQL speaks no TLS, which makes it the witness: a production
engine must refuse to talk to it rather than fall back to plain text.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from kindrobots.config import ConfigError, Settings
from kindrobots.db.engine import create_engine
from tests.conftest import POSTGRES_URL, make_settings, require_service


async def _select_one(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


def _production(tmp_path: Path, **overrides: object) -> Settings:
    return make_settings(
        tmp_path,
        "postgresql",
        env="production",
        public_url="https://api.example.com",
        metrics_port=9100,
        **overrides,
    )


async def test_production_refuses_a_database_without_tls(tmp_path: Path) -> None:
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    await _select_one(make_settings(tmp_path, "postgresql"))  # reachable in plain text
    with pytest.raises(Exception, match=r"(?i)ssl"):
        await _select_one(_production(tmp_path))


def test_production_cannot_switch_database_tls_off(tmp_path: Path) -> None:
    for mode in ("disable", "prefer"):
        with pytest.raises(ConfigError, match="KR_DATABASE_SSL"):
            _production(tmp_path, database_ssl=mode)
