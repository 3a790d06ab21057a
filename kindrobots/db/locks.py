"""Serialising writes that read-then-write one organization's rows (seats, owners, chains)."""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.db.models import Organization


async def lock_organization(
    session: AsyncSession, organization_id: uuid.UUID
) -> Organization | None:
    """Hold the organization until the transaction ends; None if it does not exist.

    PostgreSQL takes a row lock. SQLite ignores FOR UPDATE, and its driver opens the
    transaction only at the first write, so counts read afterwards would race a
    concurrent writer; a no-op UPDATE takes SQLite's write lock instead.
    """
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(
            update(Organization)
            .where(Organization.id == organization_id)
            .values(tier=Organization.tier)
            .execution_options(synchronize_session=False)
        )
    return await session.scalar(
        select(Organization).where(Organization.id == organization_id).with_for_update()
    )
