"""Daily usage roll-ups (``usage_daily``), filled from the ledger rows already recorded.

Revision ID: 0002
Revises: 0001
Create Date: 2026-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

AutoId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_KEY = ("day", "user", "group", "kind", "model", "kernelspec", "source", "route", "currency")


#: DAY_OF_OCCURRED_AT is replaced by the dialect's spelling of the UTC day (no input here).
_BACKFILL = """
INSERT INTO usage_daily (day, "user", "group", kind, model, kernelspec, source, route,
                         currency, events, input_tokens, output_tokens, quantity, cost)
SELECT DAY_OF_OCCURRED_AT, "user", coalesce("group", ''), kind, coalesce(model, ''),
       coalesce(kernelspec, ''), coalesce(source, ''), coalesce(route, ''), currency,
       count(*), sum(input_tokens), sum(output_tokens), sum(quantity), sum(cost)
FROM usage_ledger
GROUP BY DAY_OF_OCCURRED_AT, "user", coalesce("group", ''), kind, coalesce(model, ''),
         coalesce(kernelspec, ''), coalesce(source, ''), coalesce(route, ''), currency
"""


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("id", AutoId, autoincrement=True, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("group", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("kernelspec", sa.String(255), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("route", sa.String(255), nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("quantity", sa.Float(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_usage_daily"),
        sa.UniqueConstraint(*_KEY, name="uq_usage_daily_key"),
    )
    op.create_index("ix_usage_daily_user_day", "usage_daily", ["user", "day"])
    op.create_index("ix_usage_daily_group_day", "usage_daily", ["group", "day"])
    # Roll up what the ledger already holds, so reports read the same figures after upgrade.
    day = "date(occurred_at)" if op.get_bind().dialect.name == "sqlite" \
        else "CAST(timezone('UTC', occurred_at) AS date)"
    op.execute(_BACKFILL.replace("DAY_OF_OCCURRED_AT", day))


def downgrade() -> None:
    op.drop_table("usage_daily")
