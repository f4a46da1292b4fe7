"""execution's shared venue: the latest quote per symbol and the enforced trading state.

Revision ID: 0011_execution_shared
Revises: 0010_monitored_entry
Create Date: 2026-12-04 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_execution_shared"
down_revision: str | None = "0010_monitored_entry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from the models, so this revision's DDL never changes.
AMOUNT = sa.Numeric(precision=38, scale=18)
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "execution_quotes",
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("bid", AMOUNT, nullable=False),
        sa.Column("ask", AMOUNT, nullable=False),
        sa.Column("last", AMOUNT, nullable=False),
        sa.Column("volume", AMOUNT, nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("symbol", name=op.f("pk_execution_quotes")),
    )
    op.create_table(
        "execution_risk_states",
        sa.Column("venue", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("token", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("verified_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("venue", name=op.f("pk_execution_risk_states")),
    )


def downgrade() -> None:
    op.drop_table("execution_risk_states")
    op.drop_table("execution_quotes")
