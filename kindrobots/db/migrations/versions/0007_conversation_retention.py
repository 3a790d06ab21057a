"""conversation retention per organization

Revision ID: 0007
Revises: 0006

``organizations.conversation_retention_days`` (NULL keeps conversations) and the index
the retention purge (``kindrobots retention run``) finds idle conversations by.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(sa.Column("conversation_retention_days", sa.Integer(), nullable=True))
    op.create_index(
        "ix_conversations_org_updated",
        "conversations",
        ["organization_id", "updated_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_conversations_org_updated", table_name="conversations")
    with op.batch_alter_table("organizations") as batch:
        batch.drop_column("conversation_retention_days")
