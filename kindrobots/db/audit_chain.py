"""The audit log's hash chains: one per organization and one for the platform.

Every event stores the hash of the one before it and a hash over its own
content plus that link, so an edited, deleted or reordered event breaks the
chain at that point. Each chain's newest link is kept in its ``AuditHead``,
sealed with an HMAC under ``KR_AUDIT_KEY``, a key the database never sees:
whoever rewrites events and recomputes every hash, or cuts the newest events
off, cannot make the head agree again. ``kindrobots audit verify`` walks it all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from dataclasses import dataclass, field

from sqlalchemy import Connection, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.db.locks import locked_heads
from kindrobots.db.models import PLATFORM_CHAIN, AuditEvent, AuditHead, utcnow

logger = logging.getLogger("kindrobots.audit")

# Where a write session keeps the audit key (``db.engine.create_sessionmaker``): every
# unit of work that can append an event carries the key its heads are sealed with.
SESSION_KEY = "kindrobots.audit_key"


def session_key(session: AsyncSession) -> bytes:
    key = session.info.get(SESSION_KEY)
    if not isinstance(key, bytes):
        raise RuntimeError("audit events need a write session made with the audit key")
    return key


def chain_of(event: AuditEvent) -> uuid.UUID:
    """The chain an event belongs to: its organization's, or the platform's."""
    return event.organization_id or PLATFORM_CHAIN


def event_hash(event: AuditEvent) -> str:
    # ``actor`` names the acting user itself; ``actor_id`` is only the join to users
    # (SET NULL when one is deleted), so it stays outside the hash.
    content = {
        "organization_id": str(event.organization_id) if event.organization_id else None,
        "sequence": event.sequence,
        "previous_hash": event.previous_hash,
        "actor_kind": event.actor_kind,
        "actor": event.actor,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "metadata": event.details,
        "ip": event.ip,
        "created_at": event.created_at.isoformat(),
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ChainTampered(RuntimeError):
    """A chain's head does not carry a valid MAC: someone changed it outside the service."""

    def __init__(self, chain_id: uuid.UUID) -> None:
        super().__init__(f"audit chain {chain_id} does not verify")
        self.chain_id = chain_id


def _head_sealed(key: bytes, head: AuditHead) -> bool:
    if head.mac is None:
        return head.sequence == 0 and head.hash is None
    expected = head_mac(key, head.chain_id, head.sequence, head.hash)
    return hmac.compare_digest(head.mac, expected)


def head_mac(key: bytes, chain_id: uuid.UUID, sequence: int, digest: str | None) -> str:
    """HMAC-SHA256 over ``{chain_id}:{sequence}:{hash}`` (hash empty at sequence 0), hex."""
    message = f"{chain_id}:{sequence}:{digest or ''}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


async def append(session: AsyncSession, event: AuditEvent, key: bytes) -> AuditEvent:
    """Link ``event`` after its chain's head, add it and move the sealed head onto it.

    The head comes from ``session.info`` when ``locks.lock_organization`` (or
    ``lock_row``) already locked it; otherwise it is read ``FOR UPDATE`` here (and
    created for a chain that has none yet). The head lock orders concurrent
    writers of one chain.

    A head whose MAC does not verify is never extended: sealing it again would
    launder a rewritten or truncated chain. Only an empty chain (sequence 0) may
    come without a MAC; the migration that created heads sealed the others.
    """
    chain_id = chain_of(event)
    heads = locked_heads(session)
    head = heads.get(chain_id)
    if head is None:
        head = await session.scalar(
            select(AuditHead)
            .where(AuditHead.chain_id == chain_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if head is None:
            head = AuditHead(chain_id=chain_id, sequence=0, hash=None)
            session.add(head)
        heads[chain_id] = head
    if not _head_sealed(key, head):
        logger.error("audit chain %s: head does not verify; refusing to extend it", chain_id)
        raise ChainTampered(chain_id)
    # Column defaults apply only at INSERT; the hash must see the values stored.
    if event.details is None:
        event.details = {}
    if event.created_at is None:
        event.created_at = utcnow()
    event.sequence = head.sequence + 1
    event.previous_hash = head.hash
    event.hash = event_hash(event)
    session.add(event)
    head.sequence = event.sequence
    head.hash = event.hash
    head.mac = head_mac(key, chain_id, event.sequence, event.hash)
    return event


def seal_unsealed_heads(connection: Connection, key: bytes) -> int:
    """MAC every head that has none, as they stand: only right after the migration wrote
    them (``migrate.upgrade``), when they are trusted. Returns how many were sealed."""
    heads = connection.execute(
        select(AuditHead.chain_id, AuditHead.sequence, AuditHead.hash).where(
            AuditHead.mac.is_(None)
        )
    ).all()
    for chain_id, sequence, digest in heads:
        connection.execute(
            update(AuditHead)
            .where(AuditHead.chain_id == chain_id)
            .values(mac=head_mac(key, chain_id, sequence, digest))
        )
    return len(heads)


@dataclass(frozen=True)
class BrokenLink:
    """The first fault of one chain: at an event, or at its head (``event_id`` None)."""

    chain_id: uuid.UUID
    sequence: int
    event_id: uuid.UUID | None
    reason: str

    @property
    def organization_id(self) -> uuid.UUID | None:
        """None for the platform chain."""
        return None if self.chain_id == PLATFORM_CHAIN else self.chain_id


@dataclass
class ChainReport:
    checked: int = 0
    broken: list[BrokenLink] = field(default_factory=list)


@dataclass
class _Walk:
    chain_id: uuid.UUID
    sequence: int = 0
    hash: str | None = None
    broken: bool = False


async def verify(session: AsyncSession, key: bytes, batch: int = 1000) -> ChainReport:
    """Walk every chain; report the first broken link of each, or its head's fault."""
    report = ChainReport()
    if session.get_bind().dialect.name == "postgresql" and not session.in_transaction():
        # Heads and events from one snapshot: an append committing between the two
        # reads would otherwise look like a head out of step with its chain. (SQLite's
        # transaction is a snapshot already.)
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    heads = {head.chain_id: head for head in await session.scalars(select(AuditHead))}
    walked: set[uuid.UUID] = set()
    walk: _Walk | None = None
    result = await session.stream_scalars(
        select(AuditEvent)
        .order_by(AuditEvent.organization_id, AuditEvent.sequence)
        .execution_options(yield_per=batch)
    )
    async for event in result:
        report.checked += 1
        chain_id = chain_of(event)
        if walk is None or walk.chain_id != chain_id:
            if walk is not None:
                _check_head(report, walk, heads.get(walk.chain_id), key)
            walk = _Walk(chain_id)
            walked.add(chain_id)
        if walk.broken:
            continue
        reason = _fault(event, walk.sequence + 1, walk.hash)
        if reason:
            walk.broken = True
            report.broken.append(BrokenLink(chain_id, event.sequence, event.id, reason))
        walk.sequence, walk.hash = event.sequence, event.hash
    if walk is not None:
        _check_head(report, walk, heads.get(walk.chain_id), key)
    # Chains without events: their heads must say so (sequence 0), sealed. An
    # organization with neither events nor head has an empty chain; the platform
    # head always exists (the migration writes it).
    if PLATFORM_CHAIN not in heads and PLATFORM_CHAIN not in walked:
        report.broken.append(BrokenLink(PLATFORM_CHAIN, 0, None, "the chain has no head"))
    for chain_id, head in heads.items():
        if chain_id not in walked:
            _check_head(report, _Walk(chain_id), head, key)
    return report


def _fault(event: AuditEvent, expected_sequence: int, previous_hash: str | None) -> str | None:
    if event.sequence != expected_sequence:
        return f"expected sequence {expected_sequence}, found {event.sequence} (event missing)"
    if event.previous_hash != previous_hash:
        return "previous_hash does not match the event before it"
    if event.hash != event_hash(event):
        return "content does not match its hash (event altered)"
    return None


def _check_head(report: ChainReport, walk: _Walk, head: AuditHead | None, key: bytes) -> None:
    """After a chain's events: its head must be sealed and name its newest event."""
    if walk.broken:
        return
    reason = _head_fault(walk, head, key)
    if reason:
        sequence = head.sequence if head is not None else walk.sequence
        report.broken.append(BrokenLink(walk.chain_id, sequence, None, reason))


def _head_fault(walk: _Walk, head: AuditHead | None, key: bytes) -> str | None:
    if head is None:
        return "events exist but the chain has no head"
    if head.mac is None:
        return "the head is not sealed (no MAC)"
    expected = head_mac(key, head.chain_id, head.sequence, head.hash)
    if not hmac.compare_digest(head.mac, expected):
        return "the head's MAC does not verify (head forged, or another KR_AUDIT_KEY)"
    if head.sequence != walk.sequence:
        return (
            f"the head names event {head.sequence} but the newest event is {walk.sequence} "
            "(events cut off)"
        )
    if head.hash != walk.hash:
        return f"the head's hash differs from event {walk.sequence}'s (events rewritten)"
    return None
