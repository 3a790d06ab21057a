"""widget conversations, feedback, token budgets and usage, forwarded end-user tokens

Revision ID: 0008
Revises: 0007

``conversations.token_hash`` is the SHA-256 of the token a widget continues its
conversation with, ``tokens_used`` what the conversation spent (its cap);
``messages.rating`` the visitor's feedback, counted per ``messages.agent_id``;
``projects.*_token_budget``/``conversation_token_cap`` the customer's own limits;
``project_usage`` one row per project and UTC day (messages, tokens, refusals);
``budget_alerts`` makes a spent budget's security event once per project and period;
``manifests.forward_end_user_token`` opts a manifest's tool calls into carrying the
end user's verified token.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kindrobots.db.models

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("manifests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "forward_end_user_token",
                sa.Boolean(),
                server_default=sa.text("false"),
                nullable=False,
            )
        )
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("daily_token_budget", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("monthly_token_budget", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("conversation_token_cap", sa.Integer(), nullable=True))
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("tokens_used", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.create_unique_constraint(batch_op.f("uq_conversations_token_hash"), ["token_hash"])
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agent_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("rating", sa.String(length=8), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_messages_agent_id_agents"),
            "agents",
            ["agent_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index("ix_messages_agent_rating", ["agent_id", "rating"], unique=False)
    op.create_table(
        "project_usage",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("refusals", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_project_usage_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_project_usage_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "day", name=op.f("pk_project_usage")),
    )
    op.create_index(
        "ix_project_usage_org_day", "project_usage", ["organization_id", "day"], unique=False
    )
    op.create_table(
        "budget_alerts",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("occurred_at", kindrobots.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_budget_alerts_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "period", name=op.f("pk_budget_alerts")),
    )


def downgrade() -> None:
    op.drop_table("budget_alerts")
    op.drop_index("ix_project_usage_org_day", table_name="project_usage")
    op.drop_table("project_usage")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_agent_rating")
        batch_op.drop_constraint(batch_op.f("fk_messages_agent_id_agents"), type_="foreignkey")
        batch_op.drop_column("rating")
        batch_op.drop_column("agent_id")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_conversations_token_hash"), type_="unique")
        batch_op.drop_column("tokens_used")
        batch_op.drop_column("token_hash")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("conversation_token_cap")
        batch_op.drop_column("monthly_token_budget")
        batch_op.drop_column("daily_token_budget")
    with op.batch_alter_table("manifests", schema=None) as batch_op:
        batch_op.drop_column("forward_end_user_token")
