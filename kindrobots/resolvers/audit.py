"""The audit log: written by every rule in the same transaction as the change it records."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import Actor, UserActor
from kindrobots.db import audit_chain
from kindrobots.db.models import AuditEvent
from kindrobots.db.pagination import Page
from kindrobots.ids import to_global_id
from kindrobots.resolvers.access import organization_page, scoped_get


async def record(
    session: AsyncSession,
    actor: Actor,
    now: datetime,
    *,
    organization_id: uuid.UUID | None,
    action: str,
    target: tuple[str, uuid.UUID] | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the organization's chain (the platform's without one);
    ``target`` is (GraphQL type, row ID), stored as its global ID."""
    target_type, target_id = target if target else (None, None)
    event = AuditEvent(
        organization_id=organization_id,
        actor_kind=actor.kind,
        actor=actor.name,
        actor_id=actor.user_id,
        action=action,
        target_type=target_type,
        target_id=to_global_id(target_type, target_id) if target_type and target_id else None,
        details=details or {},
        ip=actor.ip,
        created_at=now,
    )
    return await audit_chain.append(session, event, audit_chain.session_key(session))


async def list_events(
    session: AsyncSession,
    actor: UserActor,
    organization_id: uuid.UUID,
    first: int,
    after: str | None,
    action: str | None,
) -> Page[AuditEvent]:
    conditions = [AuditEvent.action == action] if action else []
    return await organization_page(
        session, actor, AuditEvent, organization_id, first, after, *conditions
    )


async def get_event(session: AsyncSession, actor: UserActor, event_id: uuid.UUID) -> AuditEvent:
    return await scoped_get(session, actor, AuditEvent, event_id)
