"""Security events: one table row and one structured log line per event, written by
:func:`record` in the caller's transaction.

``event`` is a stable name an operator can alert on (``signin.failed``,
``signin.locked``, ``account.locked``, ``refresh_token.reused``); ``details`` holds
counts and times, never a password, token or the email a caller typed.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import Actor, UserActor
from kindrobots.config import Settings
from kindrobots.db.models import SecurityEvent

logger = logging.getLogger("kindrobots.security")

SIGNIN_FAILED = "signin.failed"
SIGNIN_LOCKED = "signin.locked"
ACCOUNT_LOCKED = "account.locked"
REFRESH_TOKEN_REUSED = "refresh_token.reused"  # noqa: S105 (an event name)


async def record(
    session: AsyncSession,
    actor: Actor | None,
    now: datetime,
    event: str,
    *,
    user_id: uuid.UUID | None = None,
    organization_id: uuid.UUID | None = None,
    ip: str | None = None,
    details: dict[str, Any] | None = None,
) -> SecurityEvent:
    """Store one event and log it; ``user_id`` and ``ip`` default to the actor's."""
    if actor is not None:
        user_id = user_id or actor.user_id
        ip = ip or actor.ip
    row = SecurityEvent(
        occurred_at=now,
        event=event,
        organization_id=organization_id,
        user_id=user_id,
        ip=ip,
        details=details or {},
    )
    session.add(row)
    await session.flush()
    logger.warning(
        "security event %s",
        event,
        extra={
            "event": event,
            "user_id": str(user_id) if user_id else None,
            "organization_id": str(organization_id) if organization_id else None,
            "ip": ip,
            "details": details or {},
        },
    )
    return row


async def list_own_events(
    session: AsyncSession, actor: UserActor, first: int
) -> list[SecurityEvent]:
    """The caller's own events, newest first; never another user's."""
    result = await session.scalars(
        select(SecurityEvent)
        .where(SecurityEvent.user_id == actor.user.id)
        .order_by(SecurityEvent.occurred_at.desc(), SecurityEvent.id.desc())
        .limit(first)
    )
    return list(result)


async def purge_security_events(session: AsyncSession, now: datetime, settings: Settings) -> int:
    """Delete events older than ``KR_SECURITY_EVENT_RETENTION_DAYS``; returns how many."""
    cutoff = now - timedelta(days=settings.security_event_retention_days)
    result = await session.execute(delete(SecurityEvent).where(SecurityEvent.occurred_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]
