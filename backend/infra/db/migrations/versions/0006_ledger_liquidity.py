"""The fill's liquidity in the portfolio ledger.

`ledger_fills` gains `liquidity` (nullable): MAKER or TAKER, as `order.filled` carries it.
Without it a rebuilt portfolio gave every fill TAKER, and a MAKER fill redelivered after a
restart was taken for a different fill with the same id (a conflict, dead-lettered) instead of
a duplicate. Rows booked before this revision keep NULL: their liquidity is unknown, and copies
of them are compared on every other booked field.

Revision ID: 0006_ledger_liquidity
Revises: 0005_ledger_sequence
Create Date: 2026-12-01 20:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_ledger_liquidity"
down_revision: str | None = "0005_ledger_sequence"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ledger_fills") as batch:
        batch.add_column(sa.Column("liquidity", sa.String(length=5), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ledger_fills") as batch:
        batch.drop_column("liquidity")
