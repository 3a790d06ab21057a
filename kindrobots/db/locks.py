"""Serialising writes that read-then-write one organization's rows (seats, owners, chains).

Taking an organization's lock also takes its audit chain head (``AuditHead``) in
the same statement and keeps it in ``session.info[LOCKED_HEADS]``, so the audit
event the write ends with (``audit_chain.append``) needs no statement to read it.

On PostgreSQL the lock is ``FOR UPDATE`` on the rows. SQLite ignores FOR UPDATE;
write sessions there begin with ``BEGIN IMMEDIATE`` (``engine.create_sessionmaker(...,
write=True)``), which holds the whole database's write lock from the start.
"""

from __future__ import annotations

import uuid
from typing import TypeVar

from sqlalchemy import and_, event, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from kindrobots.db.models import (
    Agent,
    AuditHead,
    Conversation,
    LlmCredential,
    Manifest,
    Message,
    Organization,
    Project,
    User,
)

LOCKED_HEADS = "kindrobots.locked_audit_heads"
"""``session.info`` key: ``dict[chain id, AuditHead]`` of heads locked in this transaction."""

Owned = TypeVar("Owned", Agent, Conversation, LlmCredential, Manifest, Message, Project)


def locked_heads(session: AsyncSession | Session) -> dict[uuid.UUID, AuditHead]:
    """The heads this session's transaction holds locked, by chain id (fill it, read it)."""
    heads: dict[uuid.UUID, AuditHead] = session.info.setdefault(LOCKED_HEADS, {})
    return heads


@event.listens_for(Session, "after_transaction_end")
def _forget_heads(session: Session, _transaction: SessionTransaction) -> None:
    # A lock ends with its transaction; a later transaction of the session reads afresh.
    # A savepoint's end clears too: a rolled-back one may have moved a head in memory.
    session.info.pop(LOCKED_HEADS, None)


async def lock_organization(
    session: AsyncSession, organization_id: uuid.UUID
) -> Organization | None:
    """Hold the organization and its audit head until the transaction ends.

    One statement; None if the organization does not exist. An organization with
    no head yet (no event so far) is locked alone, and its first append creates it.
    """
    row = (
        await session.execute(
            select(Organization, AuditHead)
            .join(AuditHead, AuditHead.chain_id == Organization.id)
            .where(Organization.id == organization_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).first()
    if row is not None:
        organization, head = row
        locked_heads(session)[head.chain_id] = head
        return organization
    return await session.scalar(
        select(Organization)
        .where(Organization.id == organization_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def lock_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    """Hold the user's row until the transaction ends (checks of what a user owns)."""
    return await session.scalar(
        select(User)
        .where(User.id == user_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def lock_row(
    session: AsyncSession, model: type[Owned], row_id: uuid.UUID, organization_id: uuid.UUID
) -> Owned | None:
    """Lock the organization and its audit head, and read one of its rows afresh.

    One statement (FROM organizations JOIN audit_heads JOIN the row's table, so
    PostgreSQL locks in that order); None if the row is gone or is not the
    organization's. Without a head yet, a second statement locks the organization.
    """
    found = (
        await session.execute(
            select(Organization, AuditHead, model)
            .join(AuditHead, AuditHead.chain_id == Organization.id)
            .join(model, and_(model.organization_id == Organization.id, model.id == row_id))
            .where(Organization.id == organization_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).first()
    if found is not None:
        _, head, row = found
        locked_heads(session)[head.chain_id] = head
        return row
    fallback = (
        await session.execute(
            select(Organization, model)
            .join(model, and_(model.organization_id == Organization.id, model.id == row_id))
            .where(Organization.id == organization_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).first()
    return None if fallback is None else fallback[1]
