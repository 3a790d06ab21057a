"""containment: suspended organizations and users, signing keys shared by every instance

Revision ID: 0006
Revises: 0005

``suspended_at``/``suspended_reason`` on ``organizations`` and ``users`` are read by the
lookups every request already makes (no statement of their own). ``signing_keys`` holds
the session-token key set once ``kindrobots keys rotate-signing`` has run, private keys
sealed with ``KR_ENCRYPTION_KEYS``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kindrobots.db.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("organizations", "users"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column(
                    "suspended_at", kindrobots.db.models.UTCDateTime(timezone=True), nullable=True
                )
            )
            batch_op.add_column(sa.Column("suspended_reason", sa.String(length=200), nullable=True))
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.LargeBinary(length=12), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", kindrobots.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("retires_at", kindrobots.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
    )


def downgrade() -> None:
    op.drop_table("signing_keys")
    for table in ("users", "organizations"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("suspended_reason")
            batch_op.drop_column("suspended_at")
