"""billing: Stripe customer and subscription state, applied Stripe events, tier grace

Revision ID: 0004
Revises: 0003

``billing`` holds one row per organization that has a Stripe customer (the customer ID
unique, so an organization never shares one); ``stripe_events`` records every applied
event under its primary key, so a redelivered event is applied once; and
``organizations.tier_grace_until`` is when a past-due subscription's tier lapses.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kindrobots.db.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tier_grace_until", kindrobots.db.models.UTCDateTime(timezone=True), nullable=True
            )
        )

    op.create_table(
        "billing",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_subscription_id", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=True),
        sa.Column("price_id", sa.String(length=255), nullable=True),
        sa.Column("tier", sa.String(length=16), nullable=True),
        sa.Column(
            "current_period_start", kindrobots.db.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column(
            "current_period_end", kindrobots.db.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("trial_end", kindrobots.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("past_due_since", kindrobots.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", kindrobots.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_billing_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", name=op.f("pk_billing")),
        sa.UniqueConstraint("stripe_customer_id", name=op.f("uq_billing_stripe_customer_id")),
    )

    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=True),
        sa.Column("received_at", kindrobots.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_stripe_events_organization_id_organizations"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )


def downgrade() -> None:
    op.drop_table("stripe_events")
    op.drop_table("billing")
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_column("tier_grace_until")
