"""Security events: one table row and one structured log line per event, written by
:func:`record` in the caller's transaction.

``event`` is a stable name an operator can alert on (``signin.failed``,
``signin.locked``, ``account.locked``, ``refresh_token.reused``, ``keys.rotated``,
``project_key.rotated``, the refusals of ``security.events``, and whatever other rules
record, such as staff actions or ``budget.exhausted``); ``details`` holds counts and
times, never a password, token or the email a caller typed.

A session whose ``info`` carries :data:`ALERTS_KEY` (the server's write sessions) hands
each event to the alert engine and the metrics once its transaction has committed, so
rolled-back work raises no alert; every ``record`` caller gets this without code of its own.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, event, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from kindrobots.auth.principals import Actor, UserActor
from kindrobots.config import Settings
from kindrobots.db.models import SecurityEvent
from kindrobots.security.alerts import Alerts
from kindrobots.security.events import log_event

# session.info: the alert engine of write sessions, and the events awaiting their commit.
ALERTS_KEY = "kindrobots.alerts"
_PENDING_KEY = "kindrobots.security_events.pending"

SIGNIN_FAILED = "signin.failed"
SIGNIN_LOCKED = "signin.locked"
ACCOUNT_LOCKED = "account.locked"
REFRESH_TOKEN_REUSED = "refresh_token.reused"  # noqa: S105 (an event name)
KEYS_ROTATED = "keys.rotated"
PROJECT_KEY_ROTATED = "project_key.rotated"


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
    log_event(event, user_id=user_id, organization_id=organization_id, ip=ip, details=details)
    _after_commit(session, event, str(organization_id) if organization_id else None)
    return row


def _after_commit(session: AsyncSession, name: str, organization_id: str | None) -> None:
    alerts = session.info.get(ALERTS_KEY)
    if not isinstance(alerts, Alerts):
        return
    pending: list[tuple[str, str | None]] | None = session.info.get(_PENDING_KEY)
    if pending is None:
        pending = session.info[_PENDING_KEY] = []
        sync = session.sync_session

        def committed(_session: Session) -> None:
            events = session.info.pop(_PENDING_KEY, [])
            for committed_event, organization in events:
                alerts.observe(committed_event, organization)

        def rolled_back(_session: Session) -> None:
            session.info.pop(_PENDING_KEY, None)

        event.listen(sync, "after_commit", committed, once=True)
        event.listen(sync, "after_rollback", rolled_back, once=True)
    pending.append((name, organization_id))


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
