"""Group membership seen by this server (``group_members``), for team budgets.

A group budget sums the spend of the group's members. A user server learns who is in a group
from the identities it sees (JupyterHub's groups); the table keeps that knowledge across
restarts, so a team budget still counts a member who has not been seen since the restart.

Revision ID: 0003
Revises: 0002
Create Date: 2026-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "group_members",
        sa.Column("group", sa.String(255), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("group", "user", name="pk_group_members"),
    )


def downgrade() -> None:
    op.drop_table("group_members")
