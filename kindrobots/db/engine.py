"""Engine and session factory for PostgreSQL (asyncpg) and the embedded SQLite default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from kindrobots.config import Settings
from kindrobots.db.audit_chain import SESSION_KEY

# Execution option of the engine behind write sessions: on SQLite their transaction
# starts with BEGIN IMMEDIATE, taking the database's write lock before the first read.
WRITE_OPTION = "kr_write"


def create_engine(settings: Settings) -> AsyncEngine:
    """The engine; its errors never carry bound parameters (project keys, chat text).

    ``hide_parameters`` keeps them out of exception text and SQL logging, so no
    traceback can put a customer's secret or message in a log line.
    """
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
            _create_private(Path(url.database))
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(
        url,
        connect_args={"ssl": settings.postgres_ssl} if settings.postgres_ssl else {},
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_pre_ping=True,
        pool_recycle=1800,
        hide_parameters=True,
    )


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only (0600) before SQLite opens it:
    SQLite gives the -wal and -shm files it creates later the database file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # an existing database keeps the mode its operator gave it
    os.close(fd)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Foreign keys are off by default in SQLite; WAL lets readers run beside a writer.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
    # The driver would open transactions itself, deferred and only before the first
    # write; _sqlite_begin opens them instead (SQLAlchemy's pysqlite/aiosqlite recipe).
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: Connection) -> None:
    """Open SQLite's transaction: IMMEDIATE (write lock now) for write sessions.

    A deferred transaction that reads and then writes fails at once with "database
    is locked" when another writer committed in between, so writers take the lock
    first and queue on busy_timeout. Sent through the DBAPI cursor: transaction
    control, like PostgreSQL's BEGIN, not a statement of the session.
    """
    write = connection.get_execution_options().get(WRITE_OPTION, False)
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    finally:
        cursor.close()


def create_sessionmaker(
    engine: AsyncEngine, *, write: bool = False, audit_key: bytes | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions on ``engine``; ``write=True`` for read-then-write transactions, with the
    audit key their rules seal audit chain heads with."""
    bind = engine.execution_options(**{WRITE_OPTION: True}) if write else engine
    info = {SESSION_KEY: audit_key} if audit_key is not None else {}
    return async_sessionmaker(bind, expire_on_commit=False, info=info)
