"""Run Alembic migrations from code: the CLI, ``serve`` and the tests share this."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, column, inspect, select, table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"
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


@dataclass(frozen=True)
class MigrationState:
    """Where a database stands against this code's newest migration."""

    current: str | None
    head: str
    # The database carries a revision this code does not know: a newer release migrated
    # it (a rolling deploy, a rollback); the older code keeps serving.
    newer: bool

    @property
    def behind(self) -> bool:
        return self.current != self.head and not self.newer

    def describe(self) -> str:
        """Why the database is not ready, in one line naming the command that fixes it."""
        if self.current is None:
            return "the database has no schema yet: run `kindrobots migrate`"
        return (
            f"the database is at migration {self.current}, this version needs {self.head}: "
            "run `kindrobots migrate`"
        )


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


async def migration_state(connection: AsyncConnection) -> MigrationState:
    """The database's revision against the head, read on ``connection`` (one query)."""

    def read(sync: Connection) -> str | None:
        # Read directly: MigrationContext would log two INFO lines on every readiness probe.
        if not inspect(sync).has_table(VERSION_TABLE):
            return None
        return sync.execute(
            select(column("version_num")).select_from(table(VERSION_TABLE))
        ).scalar()

    current = await connection.run_sync(read)
    script = _script()
    head = script.get_current_head()
    assert head is not None, "the migration history has one head"
    known = current is None or any(step.revision == current for step in script.walk_revisions())
    return MigrationState(current=current, head=head, newer=not known)
