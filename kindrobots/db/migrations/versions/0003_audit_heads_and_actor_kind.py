"""audit chain heads, platform chain, actor kind

Revision ID: 0003
Revises: 0002

Every event gains ``actor_kind`` and ``actor`` (backfilled as the user who acted,
or ``system``), ``organization_id`` may be NULL (a platform event), and every
chain gets an ``audit_heads`` row. The event hash now covers the actor too, so
every existing hash is recomputed here; the heads are written without a MAC
(the migration has no key) and the next append seals them.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import kindrobots.db.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PLATFORM_CHAIN = uuid.UUID(int=0)

events = sa.table(
    "audit_events",
    sa.column("id", sa.Uuid()),
    sa.column("organization_id", sa.Uuid()),
    sa.column("actor_kind", sa.String()),
    sa.column("actor", sa.String()),
    sa.column("actor_id", sa.Uuid()),
    sa.column("action", sa.String()),
    sa.column("target_type", sa.String()),
    sa.column("target_id", sa.String()),
    sa.column("metadata", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
    sa.column("ip", sa.String()),
    sa.column("created_at", kindrobots.db.models.UTCDateTime(timezone=True)),
    sa.column("sequence", sa.Integer()),
    sa.column("previous_hash", sa.String()),
    sa.column("hash", sa.String()),
)
organizations = sa.table("organizations", sa.column("id", sa.Uuid()))


def _digest(content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _hash_0003(row: dict[str, Any]) -> str:
    """``kindrobots.db.audit_chain.event_hash`` as of this revision (frozen here)."""
    organization_id = row["organization_id"]
    return _digest(
        {
            "organization_id": str(organization_id) if organization_id else None,
            "sequence": row["sequence"],
            "previous_hash": row["previous_hash"],
            "actor_kind": row["actor_kind"],
            "actor": row["actor"],
            "action": row["action"],
            "target_type": row["target_type"],
            "target_id": row["target_id"],
            "metadata": row["metadata"],
            "ip": row["ip"],
            "created_at": row["created_at"].isoformat(),
        }
    )


def _hash_0002(row: dict[str, Any]) -> str:
    """The event hash before this revision, for the downgrade."""
    actor_id = row["actor_id"]
    return _digest(
        {
            "organization_id": str(row["organization_id"]),
            "sequence": row["sequence"],
            "previous_hash": row["previous_hash"],
            "actor_id": str(actor_id) if actor_id else None,
            "action": row["action"],
            "target_type": row["target_type"],
            "target_id": row["target_id"],
            "metadata": row["metadata"],
            "ip": row["ip"],
            "created_at": row["created_at"].isoformat(),
        }
    )


def _rechain(
    hash_of: Callable[[dict[str, Any]], str], backfill_actor: bool
) -> dict[uuid.UUID | None, tuple[int, str]]:
    """Recompute every event's link and hash, chain by chain; return each chain's newest."""
    connection = op.get_bind()
    columns = [c for c in events.c if backfill_actor or c.name not in ("actor_kind", "actor")]
    rows = connection.execute(
        sa.select(*columns).order_by(events.c.organization_id, events.c.sequence)
    ).mappings()
    newest: dict[uuid.UUID | None, tuple[int, str]] = {}
    changes: list[dict[str, Any]] = []
    for mapping in rows:
        row = dict(mapping)
        chain = row["organization_id"]
        if backfill_actor:
            actor_id = row["actor_id"]
            row["actor_kind"] = "user"
            row["actor"] = str(actor_id) if actor_id else "system"
        row["previous_hash"] = newest[chain][1] if chain in newest else None
        row["hash"] = hash_of(row)
        newest[chain] = (row["sequence"], row["hash"])
        changes.append(
            {
                "event_id": row["id"],
                "new_actor_kind": row.get("actor_kind"),
                "new_actor": row.get("actor"),
                "new_previous_hash": row["previous_hash"],
                "new_hash": row["hash"],
            }
        )
    values: dict[str, Any] = {
        "previous_hash": sa.bindparam("new_previous_hash"),
        "hash": sa.bindparam("new_hash"),
    }
    if backfill_actor:
        values |= {"actor_kind": sa.bindparam("new_actor_kind"), "actor": sa.bindparam("new_actor")}
    statement = events.update().where(events.c.id == sa.bindparam("event_id")).values(**values)
    for start in range(0, len(changes), 1000):
        connection.execute(statement, changes[start : start + 1000])
    return newest


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("actor_kind", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("actor", sa.String(length=64), nullable=True))
        batch_op.alter_column("organization_id", existing_type=sa.Uuid(), nullable=True)

    # Every old event was written by a signed-in user; ``system`` stands in for one
    # whose row is gone (``actor_id`` SET NULL).
    newest = _rechain(_hash_0003, backfill_actor=True)

    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.alter_column("actor_kind", existing_type=sa.String(length=16), nullable=False)
        batch_op.alter_column("actor", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index(
            "uq_audit_events_platform_sequence",
            ["sequence"],
            unique=True,
            sqlite_where=sa.text("organization_id IS NULL"),
            postgresql_where=sa.text("organization_id IS NULL"),
        )

    heads = op.create_table(
        "audit_heads",
        sa.Column("chain_id", sa.Uuid(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=True),
        sa.Column("mac", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("chain_id", name=op.f("pk_audit_heads")),
    )
    assert heads is not None
    connection = op.get_bind()
    rows = [{"chain_id": PLATFORM_CHAIN, "sequence": 0, "hash": None, "mac": None}]
    for (organization_id,) in connection.execute(sa.select(organizations.c.id)):
        sequence, digest = newest.get(organization_id, (0, None))
        rows.append(
            {"chain_id": organization_id, "sequence": sequence, "hash": digest, "mac": None}
        )
    op.bulk_insert(heads, rows)


def downgrade() -> None:
    op.drop_table("audit_heads")
    # The old schema has no platform chain: its events cannot be kept.
    op.execute(events.delete().where(events.c.organization_id.is_(None)))
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("uq_audit_events_platform_sequence")
        batch_op.drop_column("actor")
        batch_op.drop_column("actor_kind")
        batch_op.alter_column("organization_id", existing_type=sa.Uuid(), nullable=False)
    _rechain(_hash_0002, backfill_actor=False)
