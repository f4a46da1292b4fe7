"""position-monitor's table: the positions it protects, their stops, trailing state and exit.

Revision ID: 0008_monitored_positions
Revises: 0007_rl_policy_artifact
Create Date: 2026-12-03 18:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008_monitored_positions"
down_revision: str | None = "0007_rl_policy_artifact"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from the models, so this revision's DDL never changes.
AMOUNT = sa.Numeric(precision=38, scale=18)
TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "monitored_positions",
        sa.Column("position_id", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("quantity", AMOUNT, nullable=False),
        sa.Column("entry_price", AMOUNT, nullable=False),
        sa.Column("opened_ms", sa.BigInteger(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=True),
        sa.Column("stops", JSON, nullable=False),
        sa.Column("best_price", AMOUNT, nullable=True),
        sa.Column("trailing_active", sa.Boolean(), nullable=False),
        sa.Column("trailing_level", AMOUNT, nullable=True),
        sa.Column("exit_round", sa.Integer(), nullable=False),
        sa.Column("exit_reason", sa.String(length=16), nullable=True),
        sa.Column("exit_stage", sa.String(length=16), nullable=True),
        sa.Column("exit_client_order_id", sa.String(length=64), nullable=True),
        sa.Column("exit_trigger_price", AMOUNT, nullable=True),
        sa.Column("exit_observed_price", AMOUNT, nullable=True),
        sa.Column("exit_quantity", AMOUNT, nullable=True),
        sa.Column("exit_started_ms", sa.BigInteger(), nullable=True),
        sa.Column("exit_outcome", sa.String(length=16), nullable=True),
        sa.Column("exit_detail", sa.Text(), nullable=False),
        sa.Column("trace_id", sa.String(length=32), nullable=True),
        sa.Column("closed_ms", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("position_id", name=op.f("pk_monitored_positions")),
    )
    op.create_index(
        op.f("ix_monitored_positions_symbol"), "monitored_positions", ["symbol"], unique=False
    )
    op.create_index(
        op.f("ix_monitored_positions_status"), "monitored_positions", ["status"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_monitored_positions_status"), table_name="monitored_positions")
    op.drop_index(op.f("ix_monitored_positions_symbol"), table_name="monitored_positions")
    op.drop_table("monitored_positions")
