"""Alembic migrations build exactly the models, on SQLite and on PostgreSQL, both ways."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kindrobots.db.migrate import alembic_config, upgrade
from kindrobots.db.models import Base
from tests.conftest import POSTGRES_URL, require_service, scratch_database

MODEL_TABLES = set(Base.metadata.tables)


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    config = alembic_config()

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def differences(engine: AsyncEngine) -> list[Any]:
    """What autogenerate would write to bring the database to the models: nothing, ideally."""

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        return await connection.run_sync(compare)


async def tables_and_revision(engine: AsyncEngine) -> tuple[set[str], str | None]:
    def read(connection: Connection) -> tuple[set[str], str | None]:
        return (
            set(inspect(connection).get_table_names()),
            MigrationContext.configure(connection).get_current_revision(),
        )

    async with engine.connect() as connection:
        return await connection.run_sync(read)


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


async def check_round_trip(engine: AsyncEngine) -> None:
    await upgrade(engine)
    tables, revision = await tables_and_revision(engine)
    assert revision == head()
    assert tables - {"alembic_version"} == MODEL_TABLES
    assert await differences(engine) == []

    await downgrade(engine)
    tables, revision = await tables_and_revision(engine)
    assert revision is None
    assert tables - {"alembic_version"} == set()

    await upgrade(engine)
    tables, revision = await tables_and_revision(engine)
    assert revision == head()
    assert tables - {"alembic_version"} == MODEL_TABLES
    assert await differences(engine) == []


def test_one_linear_history() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1, "several heads: merge the migration branches"
    assert len(script.get_bases()) == 1


async def test_sqlite_migrations_match_the_models(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/migrate.db")
    try:
        await check_round_trip(engine)
    finally:
        await engine.dispose()


async def test_the_comparison_notices_a_missing_table(tmp_path: Path) -> None:
    """The check above can fail: a database one migration short of the models differs."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/short.db")
    try:
        await upgrade(engine)
        async with engine.begin() as connection:
            await connection.execute(text("DROP TABLE audit_events"))
        found = await differences(engine)
        assert any(change[0] == "add_table" for change in found), found
    finally:
        await engine.dispose()


@pytest.fixture
async def postgres_database() -> AsyncIterator[str]:
    """A fresh database of this test's own, beside (never inside) the shared ``test`` one."""
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    async with scratch_database() as url:
        yield url


async def test_postgresql_migrations_match_the_models(postgres_database: str) -> None:
    engine = create_async_engine(postgres_database)
    try:
        await check_round_trip(engine)
    finally:
        await engine.dispose()
