"""Run Alembic migrations from code: the CLI, ``serve`` and the tests share this."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).with_name("migrations")
# The revision that writes the audit heads, unsealed: it has no key.
AUDIT_HEADS_REVISION = "0003"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


async def upgrade(
    engine: AsyncEngine, revision: str = "head", audit_key: bytes | None = None
) -> None:
    """Bring the database to ``revision`` on an already running event loop.

    With ``audit_key``, the audit heads written by this very run's
    AUDIT_HEADS_REVISION are sealed in the same transaction (trusted: nothing has
    touched them yet). Heads found unsealed on any later run are left to verify.
    """
    from kindrobots.db.audit_chain import seal_unsealed_heads
    from kindrobots.db.engine import WRITE_OPTION

    config = alembic_config()

    def run(connection: Connection) -> None:
        current = MigrationContext.configure(connection).get_current_revision()
        script = ScriptDirectory.from_config(config)
        applying = {step.revision for step in script.iterate_revisions(revision, current) if step}
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        if audit_key and AUDIT_HEADS_REVISION in applying:
            seal_unsealed_heads(connection, audit_key)

    # SQLite: take the write lock at BEGIN, so two processes starting together queue.
    async with engine.execution_options(**{WRITE_OPTION: True}).begin() as connection:
        await connection.run_sync(run)
