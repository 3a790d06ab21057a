"""security events and sign-in lockout

Revision ID: 0005
Revises: 0004

``security_events`` keeps sign-in failures, lockouts and refresh-token reuse (purged
after ``KR_SECURITY_EVENT_RETENTION_DAYS``); ``sign_in_throttles`` counts sign-in
failures per account and per address in the database, so every instance agrees.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import kindrobots.db.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "security_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("occurred_at", kindrobots.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column(
            "details", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_security_events_organization_id_organizations"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_security_events_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_events")),
    )
    op.create_index(
        "ix_security_events_user_id_occurred_at",
        "security_events",
        ["user_id", "occurred_at"],
        unique=False,
    )
    op.create_index(
        "ix_security_events_occurred_at", "security_events", ["occurred_at"], unique=False
    )
    op.create_table(
        "sign_in_throttles",
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column(
            "window_started_at", kindrobots.db.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column(
            "last_failure_at", kindrobots.db.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("locked_until", kindrobots.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_sign_in_throttles")),
    )


def downgrade() -> None:
    op.drop_table("sign_in_throttles")
    op.drop_index("ix_security_events_occurred_at", table_name="security_events")
    op.drop_index("ix_security_events_user_id_occurred_at", table_name="security_events")
    op.drop_table("security_events")
