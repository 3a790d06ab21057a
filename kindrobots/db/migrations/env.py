"""Alembic environment: one migration history for PostgreSQL and SQLite.

The async engine lives in the caller (``kindrobots.db.migrate``), which hands a
sync-facing connection in through ``config.attributes`` via ``run_sync``.
"""

from __future__ import annotations

from alembic import context

from kindrobots.db.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
