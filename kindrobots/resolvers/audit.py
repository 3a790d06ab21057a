"""The audit log: written in the same transaction as the change it records."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.roles import Role
from kindrobots.context import RequestContext
from kindrobots.db import audit_chain
from kindrobots.db.models import AuditEvent
from kindrobots.db.pagination import Page
from kindrobots.ids import to_global_id
from kindrobots.resolvers.access import (
    organization_page,
    require_role,
    scoped_get,
)


async def record(
    session: AsyncSession,
    ctx: RequestContext,
    *,
    organization_id: uuid.UUID,
    actor_id: uuid.UUID | None,
    action: str,
    target: tuple[str, uuid.UUID],
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event; ``target`` is (GraphQL type, row ID), stored as its global ID."""
    target_type, target_id = target
    event = AuditEvent(
        organization_id=organization_id,
        actor_kind="user" if actor_id else "system",
        actor=str(actor_id) if actor_id else "system",
        actor_id=actor_id,
        action=action,
        target_type=target_type,
        target_id=to_global_id(target_type, target_id),
        details=details or {},
        ip=ctx.ip,
        created_at=ctx.now(),
    )
    return await audit_chain.append(session, event, ctx.settings.audit_key)


async def list_events(
    ctx: RequestContext,
    organization_id: uuid.UUID,
    first: int,
    after: str | None,
    action: str | None,
) -> Page[AuditEvent]:
    conditions = [AuditEvent.action == action] if action else []
    return await organization_page(
        ctx, AuditEvent, organization_id, Role.ADMIN, first, after, *conditions
    )


async def get_event(ctx: RequestContext, event_id: uuid.UUID) -> AuditEvent:
    """By ID for ``node``: ADMIN of the event's organization, NOT_FOUND for outsiders."""
    async with ctx.services.read() as session:
        event = await scoped_get(session, ctx, AuditEvent, event_id)
    assert event.organization_id is not None  # scoped_get: the caller's organizations only
    await require_role(ctx, event.organization_id, Role.ADMIN)
    return event
