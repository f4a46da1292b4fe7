"""Initial schema: every service's tables (see TABLE_OWNERS in backend/infra/db/models.py).

Revision ID: 0001
Revises:
Create Date: 2026-11-24 01:54:28.252717
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types spelled out here, not imported from the models: a migration is a frozen snapshot and
# must keep producing the same DDL when the application's types change later.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
AMOUNT = sa.Numeric(precision=38, scale=18)
TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "bot_decisions",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("confidence", AMOUNT, nullable=False),
        sa.Column("model_name", sa.String(length=100), nullable=False),
        sa.Column("model_version", sa.String(length=50), nullable=False),
        sa.Column("client_order_id", sa.String(length=64), nullable=True),
        sa.Column("features", JSON, nullable=True),
        sa.Column("trace_id", sa.String(length=32), nullable=True),
        sa.Column("decided_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bot_decisions")),
        sa.UniqueConstraint("client_order_id", name=op.f("uq_bot_decisions_client_order_id")),
    )
    op.create_index(
        op.f("ix_bot_decisions_symbol_decided_at"),
        "bot_decisions",
        ["symbol", "decided_at"],
        unique=False,
    )

    op.create_table(
        "drift_measurements",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(length=100), nullable=False),
        sa.Column("model_version", sa.String(length=50), nullable=False),
        sa.Column("feature", sa.String(length=100), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("value", AMOUNT, nullable=False),
        sa.Column("threshold", AMOUNT, nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False),
        sa.Column("window_start", TIMESTAMP, nullable=False),
        sa.Column("window_end", TIMESTAMP, nullable=False),
        sa.Column("measured_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_measurements")),
    )
    op.create_index(
        op.f("ix_drift_measurements_model_name_model_version_measured_at"),
        "drift_measurements",
        ["model_name", "model_version", "measured_at"],
        unique=False,
    )

    op.create_table(
        "equity_points",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("equity", AMOUNT, nullable=False),
        sa.Column("cash", AMOUNT, nullable=False),
        sa.Column("unrealized_pnl", AMOUNT, nullable=False),
        sa.Column("realized_pnl", AMOUNT, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_equity_points")),
    )
    op.create_index(op.f("ix_equity_points_at"), "equity_points", ["at"], unique=False)

    op.create_table(
        "ledger_fills",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("fill_id", sa.String(length=64), nullable=False),
        sa.Column("client_order_id", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("quantity", AMOUNT, nullable=False),
        sa.Column("price", AMOUNT, nullable=False),
        sa.Column("fee", AMOUNT, nullable=False),
        sa.Column("filled_at", TIMESTAMP, nullable=False),
        sa.Column("booked_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_fills")),
        sa.UniqueConstraint("fill_id", name=op.f("uq_ledger_fills_fill_id")),
    )
    op.create_index(op.f("ix_ledger_fills_symbol"), "ledger_fills", ["symbol"], unique=False)

    op.create_table(
        "model_registry",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("artifact_uri", sa.String(length=500), nullable=False),
        sa.Column("metrics", JSON, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("promoted_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_registry")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_model_registry_name_version")),
    )
    op.create_table(
        "orders",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("client_order_id", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("order_type", sa.String(length=10), nullable=False),
        sa.Column("quantity", AMOUNT, nullable=False),
        sa.Column("limit_price", AMOUNT, nullable=True),
        sa.Column("time_in_force", sa.String(length=3), nullable=False),
        sa.Column("reduce_only", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("filled_quantity", AMOUNT, nullable=False),
        sa.Column("average_fill_price", AMOUNT, nullable=True),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("client_order_id", name=op.f("uq_orders_client_order_id")),
    )
    op.create_index(op.f("ix_orders_symbol_status"), "orders", ["symbol", "status"], unique=False)

    op.create_table(
        "positions",
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("quantity", AMOUNT, nullable=False),
        sa.Column("average_price", AMOUNT, nullable=False),
        sa.Column("realized_pnl", AMOUNT, nullable=False),
        sa.Column("fees_paid", AMOUNT, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("symbol", name=op.f("pk_positions")),
    )
    op.create_table(
        "prediction_scores",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(length=100), nullable=False),
        sa.Column("model_version", sa.String(length=50), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("horizon_s", sa.Integer(), nullable=False),
        sa.Column("prediction", AMOUNT, nullable=False),
        sa.Column("outcome", AMOUNT, nullable=True),
        sa.Column("score", AMOUNT, nullable=True),
        sa.Column("predicted_at", TIMESTAMP, nullable=False),
        sa.Column("scored_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction_scores")),
    )
    op.create_index(
        op.f("ix_prediction_scores_model_name_model_version_predicted_at"),
        "prediction_scores",
        ["model_name", "model_version", "predicted_at"],
        unique=False,
    )

    op.create_table(
        "risk_decisions",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("client_order_id", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("quantity", AMOUNT, nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("reasons", JSON, nullable=False),
        sa.Column("trace_id", sa.String(length=32), nullable=True),
        sa.Column("decided_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_decisions")),
    )
    op.create_index(
        op.f("ix_risk_decisions_client_order_id"),
        "risk_decisions",
        ["client_order_id"],
        unique=False,
    )

    op.create_table(
        "trading_state",
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_trading_state")),
    )
    op.create_table(
        "trading_state_changes",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("from_mode", sa.String(length=16), nullable=True),
        sa.Column("to_mode", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("trace_id", sa.String(length=32), nullable=True),
        sa.Column("changed_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trading_state_changes")),
    )
    op.create_index(
        op.f("ix_trading_state_changes_scope_changed_at"),
        "trading_state_changes",
        ["scope", "changed_at"],
        unique=False,
    )

    op.create_table(
        "training_jobs",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("algorithm", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_jobs")),
    )
    op.create_index(op.f("ix_training_jobs_status"), "training_jobs", ["status"], unique=False)

    op.create_table(
        "fills",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("fill_id", sa.String(length=64), nullable=False),
        sa.Column("order_id", ID, nullable=False),
        sa.Column("client_order_id", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("quantity", AMOUNT, nullable=False),
        sa.Column("price", AMOUNT, nullable=False),
        sa.Column("fee", AMOUNT, nullable=False),
        sa.Column("liquidity", sa.String(length=5), nullable=False),
        sa.Column("filled_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_fills_order_id_orders"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fills")),
        sa.UniqueConstraint("fill_id", name=op.f("uq_fills_fill_id")),
    )
    op.create_index(op.f("ix_fills_client_order_id"), "fills", ["client_order_id"], unique=False)

    op.create_table(
        "order_events",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("order_id", ID, nullable=False),
        sa.Column("client_order_id", sa.String(length=64), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("from_status", sa.String(length=20), nullable=True),
        sa.Column("to_status", sa.String(length=20), nullable=False),
        sa.Column("filled_quantity", AMOUNT, nullable=False),
        sa.Column("fill_quantity", AMOUNT, nullable=True),
        sa.Column("fill_price", AMOUNT, nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("trace_id", sa.String(length=32), nullable=True),
        sa.Column("occurred_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
            name=op.f("fk_order_events_order_id_orders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_events")),
        sa.UniqueConstraint(
            "client_order_id", "sequence", name=op.f("uq_order_events_client_order_id_sequence")
        ),
    )
    op.create_table(
        "policies",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("job_id", ID, nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("artifact_uri", sa.String(length=500), nullable=False),
        sa.Column("metrics", JSON, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["training_jobs.id"],
            name=op.f("fk_policies_job_id_training_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policies")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_policies_name_version")),
    )


def downgrade() -> None:
    op.drop_table("policies")
    op.drop_table("order_events")
    op.drop_index(op.f("ix_fills_client_order_id"), table_name="fills")

    op.drop_table("fills")
    op.drop_index(op.f("ix_training_jobs_status"), table_name="training_jobs")

    op.drop_table("training_jobs")
    op.drop_index(
        op.f("ix_trading_state_changes_scope_changed_at"), table_name="trading_state_changes"
    )

    op.drop_table("trading_state_changes")
    op.drop_table("trading_state")
    op.drop_index(op.f("ix_risk_decisions_client_order_id"), table_name="risk_decisions")

    op.drop_table("risk_decisions")
    op.drop_index(
        op.f("ix_prediction_scores_model_name_model_version_predicted_at"),
        table_name="prediction_scores",
    )

    op.drop_table("prediction_scores")
    op.drop_table("positions")
    op.drop_index(op.f("ix_orders_symbol_status"), table_name="orders")

    op.drop_table("orders")
    op.drop_table("model_registry")
    op.drop_index(op.f("ix_ledger_fills_symbol"), table_name="ledger_fills")

    op.drop_table("ledger_fills")
    op.drop_index(op.f("ix_equity_points_at"), table_name="equity_points")

    op.drop_table("equity_points")
    op.drop_index(
        op.f("ix_drift_measurements_model_name_model_version_measured_at"),
        table_name="drift_measurements",
    )

    op.drop_table("drift_measurements")
    op.drop_index(op.f("ix_bot_decisions_symbol_decided_at"), table_name="bot_decisions")

    op.drop_table("bot_decisions")
