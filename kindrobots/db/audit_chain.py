"""The audit log's hash chain: each organization's events form an append-only sequence.

Every event stores the hash of the one before it and a hash over its own
content plus that link, so an edited, deleted or reordered event breaks the
chain at that point. ``kindrobots audit verify`` walks it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.db.locks import lock_organization
from kindrobots.db.models import AuditEvent


def event_hash(event: AuditEvent) -> str:
    content = {
        "organization_id": str(event.organization_id),
        "sequence": event.sequence,
        "previous_hash": event.previous_hash,
        "actor_id": str(event.actor_id) if event.actor_id else None,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "metadata": event.details,
        "ip": event.ip,
        "created_at": event.created_at.isoformat(),
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def append(session: AsyncSession, event: AuditEvent) -> AuditEvent:
    """Link ``event`` after the organization's newest one and add it to the session."""
    # The organization lock orders concurrent writers; locking the newest event
    # instead would let two writers both link to it once the first commits.
    await lock_organization(session, event.organization_id)
    newest = (
        await session.execute(
            select(AuditEvent.sequence, AuditEvent.hash)
            .where(AuditEvent.organization_id == event.organization_id)
            .order_by(AuditEvent.sequence.desc())
            .limit(1)
        )
    ).first()
    event.sequence = newest.sequence + 1 if newest else 1
    event.previous_hash = newest.hash if newest else None
    event.hash = event_hash(event)
    session.add(event)
    return event


@dataclass(frozen=True)
class BrokenLink:
    organization_id: uuid.UUID
    sequence: int
    event_id: uuid.UUID
    reason: str


@dataclass
class ChainReport:
    checked: int = 0
    broken: list[BrokenLink] = field(default_factory=list)


async def verify(session: AsyncSession, batch: int = 1000) -> ChainReport:
    """Walk every organization's chain; report the first broken link of each."""
    report = ChainReport()
    organization: uuid.UUID | None = None
    expected_sequence, previous_hash, broken = 1, None, False
    result = await session.stream_scalars(
        select(AuditEvent)
        .order_by(AuditEvent.organization_id, AuditEvent.sequence)
        .execution_options(yield_per=batch)
    )
    async for event in result:
        report.checked += 1
        if event.organization_id != organization:
            organization, expected_sequence, previous_hash = event.organization_id, 1, None
            broken = False
        if broken:
            continue
        reason = _fault(event, expected_sequence, previous_hash)
        if reason:
            broken = True
            report.broken.append(
                BrokenLink(event.organization_id, event.sequence, event.id, reason)
            )
        expected_sequence, previous_hash = event.sequence + 1, event.hash
    return report


def _fault(event: AuditEvent, expected_sequence: int, previous_hash: str | None) -> str | None:
    if event.sequence != expected_sequence:
        return f"expected sequence {expected_sequence}, found {event.sequence} (event missing)"
    if event.previous_hash != previous_hash:
        return "previous_hash does not match the event before it"
    if event.hash != event_hash(event):
        return "content does not match its hash (event altered)"
    return None
