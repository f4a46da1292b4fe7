"""The venue's fill sequence in the portfolio ledger.

`ledger_fills` gains `sequence` (nullable, indexed): execution's `fills.id`, carried by
`order.filled`. The portfolio replays its ledger in that order, because average-cost
accounting depends on the order fills are applied in. Rows booked before this revision keep
NULL and are replayed in booking order, ahead of the sequenced ones.

Revision ID: 0005_ledger_sequence
Revises: 0004_artifact_reason
Create Date: 2026-11-24 03:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_ledger_sequence"
down_revision: str | None = "0004_artifact_reason"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ledger_fills") as batch:
        batch.add_column(
            sa.Column(
                "sequence", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
            )
        )
        batch.create_index(batch.f("ix_ledger_fills_sequence"), ["sequence"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ledger_fills") as batch:
        batch.drop_index(batch.f("ix_ledger_fills_sequence"))
        batch.drop_column("sequence")
