"""Tenant scoping shared by the business rules: every query is filtered by the actor's
organizations in the SQL itself, never by loading and checking afterwards."""

from __future__ import annotations

import uuid
from typing import TypeVar

from sqlalchemy import ColumnElement, Select, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import UserActor
from kindrobots.auth.widgets import ORGANIZATION_SUSPENDED
from kindrobots.db import locks
from kindrobots.db.enums import Role
from kindrobots.db.models import (
    Agent,
    AuditEvent,
    Conversation,
    LlmCredential,
    Manifest,
    Membership,
    Message,
    Organization,
    Project,
)
from kindrobots.db.pagination import Page, paginate
from kindrobots.errors import Forbidden, NotFound


def require_role(actor: UserActor, organization_id: uuid.UUID, role: Role) -> Role:
    """The actor's role in the organization, if at least ``role``.

    Outsiders get NOT_FOUND, exactly as for an organization that does not exist;
    members below ``role`` get FORBIDDEN, and so does every member of a suspended one.
    """
    held = actor.roles.get(organization_id)
    if held is None:
        raise NotFound()
    if organization_id in actor.suspended:
        raise Forbidden(ORGANIZATION_SUSPENDED)
    if not held.at_least(role):
        raise Forbidden()
    return held


def member_organizations(actor: UserActor) -> Select[uuid.UUID]:
    """Organization IDs the actor belongs to, as SQL, for scoping every tenant query."""
    return select(Membership.organization_id).where(Membership.user_id == actor.user.id)


Owned = Agent | AuditEvent | Conversation | LlmCredential | Manifest | Message | Project
OWNED_MODELS: dict[str, type[Owned]] = {
    "Agent": Agent,
    "AuditEvent": AuditEvent,
    "Conversation": Conversation,
    "LlmCredential": LlmCredential,
    "Manifest": Manifest,
    "Message": Message,
    "Project": Project,
}


async def organization_of(
    session: AsyncSession, actor: UserActor, model: type[Owned], row_id: uuid.UUID
) -> uuid.UUID:
    """The organization owning a row, if the actor belongs to it; else NOT_FOUND."""
    organization_id = await session.scalar(
        select(model.organization_id).where(
            model.id == row_id, model.organization_id.in_(member_organizations(actor))
        )
    )
    if organization_id is None:
        raise NotFound()
    return organization_id


Scoped = TypeVar(
    "Scoped", Agent, AuditEvent, Conversation, LlmCredential, Manifest, Message, Project
)


async def scoped_get(
    session: AsyncSession, actor: UserActor, model: type[Scoped], row_id: uuid.UUID
) -> Scoped:
    """One row of the actor's organizations by ID, filtered in SQL; NOT_FOUND otherwise,
    exactly as for an ID that does not exist."""
    row = await session.scalar(
        select(model).where(
            model.id == row_id, model.organization_id.in_(member_organizations(actor))
        )
    )
    if row is None:
        raise NotFound()
    return row


async def delete_owned(
    session: AsyncSession,
    model: type[Manifest | LlmCredential | Project],
    row_id: uuid.UUID,
    organization_id: uuid.UUID,
) -> None:
    """Delete one row of the organization; NOT_FOUND when a concurrent delete got there first."""
    result = await session.execute(
        delete(model).where(model.id == row_id, model.organization_id == organization_id)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound()


async def locked_organization(session: AsyncSession, organization_id: uuid.UUID) -> Organization:
    """The organization, locked with its audit head until the transaction ends; NOT_FOUND
    when it is gone."""
    organization = await locks.lock_organization(session, organization_id)
    if organization is None:
        raise NotFound()
    return organization


Locked = TypeVar("Locked", Agent, Project)


async def lock_row(
    session: AsyncSession, model: type[Locked], row_id: uuid.UUID, organization_id: uuid.UUID
) -> Locked:
    """The organization lock and one of its rows as it is now, in one statement: it may
    have changed or gone since the caller was authorized (gone answers NOT_FOUND)."""
    row = await locks.lock_row(session, model, row_id, organization_id)
    if row is None:
        raise NotFound()
    return row


Listed = TypeVar("Listed", Agent, AuditEvent, Conversation, Manifest, Membership, Project)


async def organization_page(
    session: AsyncSession,
    actor: UserActor,
    model: type[Listed],
    organization_id: uuid.UUID,
    first: int,
    after: str | None,
    *conditions: ColumnElement[bool],
) -> Page[Listed]:
    """One page of an organization's rows, oldest first.

    The organization is also filtered by the actor's memberships in SQL, so the
    query itself can never read another tenant's rows.
    """
    statement = select(model).where(
        model.organization_id == organization_id,
        model.organization_id.in_(member_organizations(actor)),
        *conditions,
    )
    return await paginate(session, statement, model.created_at, model.id, first, after)
