"""position-monitor's entry in columns: the entry order's client order id and traceparent move
out of the JSON `stops` column into `entry_client_order_id` and `entry_traceparent`.

Revision ID: 0010_monitored_entry
Revises: 0009_outbox_claim
Create Date: 2026-12-04 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010_monitored_entry"
down_revision: str | None = "0009_outbox_claim"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from the models, so this revision never changes.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_positions = sa.table(
    "monitored_positions",
    sa.column("position_id", sa.String(64)),
    sa.column("stops", JSON),
    sa.column("entry_client_order_id", sa.String(64)),
    sa.column("entry_traceparent", sa.String(64)),
)


def _rows() -> list[Any]:
    bind = op.get_bind()
    return list(
        bind.execute(
            sa.select(
                _positions.c.position_id,
                _positions.c.stops,
                _positions.c.entry_client_order_id,
                _positions.c.entry_traceparent,
            )
        )
    )


def upgrade() -> None:
    with op.batch_alter_table("monitored_positions") as batch:
        batch.add_column(sa.Column("entry_client_order_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("entry_traceparent", sa.String(length=64), nullable=True))
    bind = op.get_bind()
    for position_id, stops, _, _ in _rows():
        if not isinstance(stops, dict) or "entry" not in stops:
            continue
        entry = stops.pop("entry") or {}
        bind.execute(
            _positions.update()
            .where(_positions.c.position_id == position_id)
            .values(
                stops=stops,
                entry_client_order_id=entry.get("client_order_id"),
                entry_traceparent=entry.get("traceparent"),
            )
        )


def downgrade() -> None:
    bind = op.get_bind()
    for position_id, stops, client_order_id, traceparent in _rows():
        if client_order_id is None and traceparent is None:
            continue
        entry = {"client_order_id": client_order_id, "traceparent": traceparent}
        bind.execute(
            _positions.update()
            .where(_positions.c.position_id == position_id)
            .values(stops={**(stops or {}), "entry": entry})
        )
    with op.batch_alter_table("monitored_positions") as batch:
        batch.drop_column("entry_traceparent")
        batch.drop_column("entry_client_order_id")
