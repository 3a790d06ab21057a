"""The audit log: written in the same transaction as the change it records."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.roles import Role
from kindrobots.context import RequestContext
from kindrobots.db import audit_chain
from kindrobots.db.models import AuditEvent
from kindrobots.db.pagination import Page, paginate
from kindrobots.resolvers.access import (
    member_organizations,
    require_role,
    require_viewer,
    scoped_get,
)


async def record(
    session: AsyncSession,
    ctx: RequestContext,
    *,
    organization_id: uuid.UUID,
    actor_id: uuid.UUID | None,
    action: str,
    target_type: str | None = None,
    target_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    event = AuditEvent(
        organization_id=organization_id,
        actor_id=actor_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        details=details or {},
        ip=ctx.ip,
        created_at=ctx.now(),
    )
    return await audit_chain.append(session, event)


async def list_events(
    ctx: RequestContext,
    organization_id: uuid.UUID,
    first: int,
    after: str | None,
    action: str | None,
) -> Page[AuditEvent]:
    await require_role(ctx, organization_id, Role.ADMIN)
    viewer = await require_viewer(ctx)
    statement = select(AuditEvent).where(
        AuditEvent.organization_id == organization_id,
        AuditEvent.organization_id.in_(member_organizations(viewer)),
    )
    if action:
        statement = statement.where(AuditEvent.action == action)
    async with ctx.services.read() as session:
        return await paginate(
            session, statement, AuditEvent.created_at, AuditEvent.id, first, after
        )


async def get_event(ctx: RequestContext, event_id: uuid.UUID) -> AuditEvent:
    """By ID for ``node``: ADMIN of the event's organization, NOT_FOUND for outsiders."""
    async with ctx.services.read() as session:
        event = await scoped_get(session, ctx, AuditEvent, event_id)
    await require_role(ctx, event.organization_id, Role.ADMIN)
    return event
