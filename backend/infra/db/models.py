"""The system's tables: the declarative `Base`, every model, and which service owns which table.

A table has exactly one owning service, which alone writes it and evolves its columns; other
services read it, if at all, through the owner's API or events. All tables live in one Alembic
history so that a single PostgreSQL database (production) or a per-service SQLite file
(embedded default) can be brought to the same schema with one command.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ._types import DecimalNumeric, UtcDateTime

# Which service owns which tables: the one place this is written down.
TABLE_OWNERS: Mapping[str, tuple[str, ...]] = {
    "ai-engine": ("model_registry",),
    # outbox_events holds each producing service's rows under its own `source`; execution owns
    # its schema, position-monitor writes its own rows too (in its own database by default).
    "execution": (
        "orders",
        "order_events",
        "fills",
        "outbox_events",
        "execution_quotes",
        "execution_risk_states",
    ),
    "risk-safety": ("risk_decisions", "trading_state", "trading_state_changes"),
    "portfolio-intelligence": ("ledger_fills", "positions", "equity_points"),
    "rl-training": ("training_jobs", "policies"),
    "clm": ("prediction_scores", "drift_measurements"),
    "trading-bot": ("bot_decisions",),
    "position-monitor": ("monitored_positions",),
}


def owner_of(table: str) -> str:
    """The service that owns `table`; KeyError for a table nobody owns."""
    for service, tables in TABLE_OWNERS.items():
        if table in tables:
            return service
    raise KeyError(table)


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the default of every timestamp column)."""
    return datetime.now(UTC)


# Deterministic constraint names: Alembic can drop what it created, on SQLite (batch mode) too.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an `INTEGER PRIMARY KEY`; PostgreSQL gets 64-bit ids.
ID_TYPE = BigInteger().with_variant(Integer(), "sqlite")
JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")

Id = Annotated[int, mapped_column(ID_TYPE, primary_key=True, autoincrement=True)]
Amount = Annotated[Decimal, mapped_column(DecimalNumeric(38, 18))]
Timestamp = Annotated[datetime, mapped_column(UtcDateTime())]
Created = Annotated[datetime, mapped_column(UtcDateTime(), default=utcnow)]
Symbol = Annotated[str, mapped_column(String(32))]
Side = Annotated[str, mapped_column(String(4))]
ClientOrderId = Annotated[str, mapped_column(String(64))]
TraceId = Annotated[str | None, mapped_column(String(32))]
Json = Annotated[Any, mapped_column(JSON_TYPE)]


class Base(DeclarativeBase):
    """Declarative base of every table; its `metadata` is what the migrations must match."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {Decimal: DecimalNumeric(38, 18), datetime: UtcDateTime()}


# --- ai-engine -----------------------------------------------------------------------------------


class ModelVersion(Base):
    """A trained prediction model and its lifecycle status (candidate, active, retired)."""

    __tablename__ = "model_registry"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[Id]
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    # A file the artifact was written to: before revision 0004 its only copy, now optional.
    artifact_uri: Mapped[str | None] = mapped_column(String(500))
    # The artifact's JSON as text, not JSON/JSONB: the digest covers these exact characters,
    # which JSONB would re-serialise. Loading it is parsing data, never running code.
    artifact: Mapped[str | None] = mapped_column(Text)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[Json | None]
    created_at: Mapped[Created]
    promoted_at: Mapped[datetime | None]


# --- execution -----------------------------------------------------------------------------------


class OrderRecord(Base):
    """The current state of one order; `client_order_id` is the idempotency key."""

    __tablename__ = "orders"
    __table_args__ = (Index(None, "symbol", "status"),)

    id: Mapped[Id]
    client_order_id: Mapped[ClientOrderId] = mapped_column(unique=True)
    symbol: Mapped[Symbol]
    side: Mapped[Side]
    order_type: Mapped[str] = mapped_column(String(10))
    quantity: Mapped[Amount]
    limit_price: Mapped[Decimal | None]
    time_in_force: Mapped[str] = mapped_column(String(3))
    reduce_only: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(20))
    filled_quantity: Mapped[Amount] = mapped_column(default=Decimal(0))
    average_fill_price: Mapped[Decimal | None]
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    risk_decision_id: Mapped[str | None] = mapped_column(String(64))
    # The W3C traceparent of the span that accepted the order: later fills link to it
    # (named so that the column never reads as the SQL comment of the same name).
    trace_context: Mapped[str | None] = mapped_column(String(55))
    # Cash the venue holds back for the rest of an open buy: for a market order it depends on
    # the quote at submission, so a restart could not recompute it.
    reserved_cash: Mapped[Decimal | None]
    created_at: Mapped[Created]
    updated_at: Mapped[Created]


class OrderEventRow(Base):
    """One transition of one order, append-only; (client_order_id, sequence) is unique."""

    __tablename__ = "order_events"
    __table_args__ = (UniqueConstraint("client_order_id", "sequence"),)

    id: Mapped[Id]
    order_id: Mapped[int] = mapped_column(ID_TYPE, ForeignKey("orders.id", ondelete="CASCADE"))
    client_order_id: Mapped[ClientOrderId]
    sequence: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    filled_quantity: Mapped[Amount]
    fill_quantity: Mapped[Decimal | None]
    fill_price: Mapped[Decimal | None]
    reason: Mapped[str] = mapped_column(Text, default="")
    trace_id: Mapped[TraceId]
    occurred_at: Mapped[Timestamp]


class FillRecord(Base):
    """One execution reported by the venue; `fill_id` is unique so a redelivery is refused."""

    __tablename__ = "fills"

    id: Mapped[Id]
    fill_id: Mapped[str] = mapped_column(String(64), unique=True)
    order_id: Mapped[int] = mapped_column(ID_TYPE, ForeignKey("orders.id", ondelete="CASCADE"))
    client_order_id: Mapped[ClientOrderId] = mapped_column(index=True)
    symbol: Mapped[Symbol]
    side: Mapped[Side]
    quantity: Mapped[Amount]
    price: Mapped[Amount]
    fee: Mapped[Amount]
    liquidity: Mapped[str] = mapped_column(String(5))
    filled_at: Mapped[Timestamp]


class ExecutionQuote(Base):
    """The latest quote of one symbol the shared venue matched against (replicas of execution
    sharing one venue read each other's, and ignore a tick older than the one kept)."""

    __tablename__ = "execution_quotes"

    symbol: Mapped[Symbol] = mapped_column(primary_key=True)
    bid: Mapped[Amount]
    ask: Mapped[Amount]
    last: Mapped[Amount]
    volume: Mapped[Amount]
    ts_ms: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[Created]


class ExecutionRiskState(Base):
    """The signed trading state the shared venue enforces (one row, `venue`), so that every
    replica of execution enforces a state any of them adopted."""

    __tablename__ = "execution_risk_states"

    venue: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    epoch: Mapped[int] = mapped_column(BigInteger)
    token: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    verified_at_ms: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[Created]


class OutboxEvent(Base):
    """An event written in the same transaction as the change it announces, published after.

    `published_at` is null until the relay has published it; `event_id` keeps the id (and
    `event_time` the time) the event is published with, so a second publication is a duplicate
    that consumers drop.
    """

    __tablename__ = "outbox_events"
    __table_args__ = (Index(None, "source", "published_at", "id"),)

    id: Mapped[Id]
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    schema_version: Mapped[int] = mapped_column(Integer)
    event_time: Mapped[Timestamp]
    data: Mapped[str] = mapped_column(Text)
    traceparent: Mapped[str | None] = mapped_column(String(55))
    tracestate: Mapped[str | None] = mapped_column(Text)
    baggage: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[Created]
    published_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    """The relay publishing the row (`{source}@{replica}`) until `claimed_until`."""
    claimed_until: Mapped[datetime | None]


# --- risk-safety ---------------------------------------------------------------------------------


class RiskDecision(Base):
    """The risk engine's verdict on one order request, with the rules that decided it."""

    __tablename__ = "risk_decisions"

    id: Mapped[Id]
    client_order_id: Mapped[ClientOrderId] = mapped_column(index=True)
    symbol: Mapped[Symbol]
    side: Mapped[Side]
    quantity: Mapped[Amount]
    approved: Mapped[bool] = mapped_column(Boolean)
    reasons: Mapped[Json] = mapped_column(default=list)
    trace_id: Mapped[TraceId]
    decided_at: Mapped[Created]


class TradingState(Base):
    """The kill switch: trading mode per scope ("global" or a symbol), versioned for CAS."""

    __tablename__ = "trading_state"

    scope: Mapped[str] = mapped_column(String(32), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[Created]

    # Optimistic locking: two concurrent switches cannot both win silently.
    __mapper_args__ = {"version_id_col": version}


class TradingStateChange(Base):
    """Audit trail of every trading-state change: who, when, from what to what, and why."""

    __tablename__ = "trading_state_changes"
    __table_args__ = (Index(None, "scope", "changed_at"),)

    id: Mapped[Id]
    scope: Mapped[str] = mapped_column(String(32))
    from_mode: Mapped[str | None] = mapped_column(String(16))
    to_mode: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(100))
    trace_id: Mapped[TraceId]
    changed_at: Mapped[Created]


# --- portfolio-intelligence ----------------------------------------------------------------------


class LedgerFill(Base):
    """A fill as booked into the portfolio; unique `fill_id` makes booking idempotent."""

    __tablename__ = "ledger_fills"

    id: Mapped[Id]
    fill_id: Mapped[str] = mapped_column(String(64), unique=True)
    client_order_id: Mapped[ClientOrderId]
    symbol: Mapped[Symbol] = mapped_column(index=True)
    side: Mapped[Side]
    quantity: Mapped[Amount]
    price: Mapped[Amount]
    fee: Mapped[Amount]
    filled_at: Mapped[Timestamp]
    booked_at: Mapped[Created]
    # The venue's fill sequence (execution's `fills.id`), the order the ledger is replayed in;
    # NULL for fills whose producer sent none (and those booked before revision 0005).
    sequence: Mapped[int | None] = mapped_column(ID_TYPE, index=True)
    # MAKER or TAKER, so a copy of the fill redelivered after a rebuild compares equal;
    # NULL for fills booked before revision 0006 (their copies are not compared on it).
    liquidity: Mapped[str | None] = mapped_column(String(5))


class Position(Base):
    """The net position in one symbol, derived from the ledger."""

    __tablename__ = "positions"

    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    quantity: Mapped[Amount]
    average_price: Mapped[Amount]
    realized_pnl: Mapped[Amount]
    fees_paid: Mapped[Amount]
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[Created]

    __mapper_args__ = {"version_id_col": version}


class EquityPoint(Base):
    """A point of the equity curve: marked-to-market equity at one instant."""

    __tablename__ = "equity_points"

    id: Mapped[Id]
    at: Mapped[Timestamp] = mapped_column(index=True)
    equity: Mapped[Amount]
    cash: Mapped[Amount]
    unrealized_pnl: Mapped[Amount]
    realized_pnl: Mapped[Amount]


# --- rl-training ---------------------------------------------------------------------------------


class TrainingJob(Base):
    """A reinforcement-learning training run and its progress."""

    __tablename__ = "training_jobs"

    id: Mapped[Id]
    algorithm: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(16), index=True)
    config: Mapped[Json] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    # The latest generation's figures, and the held-out evaluation and the registered policy.
    progress: Mapped[Json | None]
    result: Mapped[Json | None]
    created_at: Mapped[Created]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Policy(Base):
    """A policy produced by a training job; (name, version) is unique."""

    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[Id]
    job_id: Mapped[int | None] = mapped_column(
        ID_TYPE, ForeignKey("training_jobs.id", ondelete="SET NULL")
    )
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    artifact_uri: Mapped[str] = mapped_column(String(500))
    # The artifact's JSON as text, byte for byte as digested (see `ModelVersion.artifact`).
    artifact: Mapped[str | None] = mapped_column(Text)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[Json | None]
    created_at: Mapped[Created]


# --- clm (continuous learning) -------------------------------------------------------------------


class PredictionScore(Base):
    """A model's prediction and, once the horizon has passed, the outcome and its score."""

    __tablename__ = "prediction_scores"
    __table_args__ = (Index(None, "model_name", "model_version", "predicted_at"),)

    id: Mapped[Id]
    model_name: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(50))
    symbol: Mapped[Symbol]
    horizon_s: Mapped[int] = mapped_column(Integer)
    prediction: Mapped[Amount]
    outcome: Mapped[Decimal | None]
    score: Mapped[Decimal | None]
    predicted_at: Mapped[Timestamp]
    scored_at: Mapped[datetime | None]


class DriftMeasurement(Base):
    """One drift statistic (PSI, KS…) of one feature over one window."""

    __tablename__ = "drift_measurements"
    __table_args__ = (Index(None, "model_name", "model_version", "measured_at"),)

    id: Mapped[Id]
    model_name: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(50))
    feature: Mapped[str] = mapped_column(String(100))
    method: Mapped[str] = mapped_column(String(16))
    value: Mapped[Amount]
    threshold: Mapped[Amount]
    drifted: Mapped[bool] = mapped_column(Boolean)
    window_start: Mapped[Timestamp]
    window_end: Mapped[Timestamp]
    measured_at: Mapped[Created]


# --- trading-bot ---------------------------------------------------------------------------------


class BotDecision(Base):
    """What the bot decided for a symbol at one tick, and the order it sent, if any."""

    __tablename__ = "bot_decisions"
    __table_args__ = (Index(None, "symbol", "decided_at"),)

    id: Mapped[Id]
    symbol: Mapped[Symbol]
    action: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(64), index=True, default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    confidence: Mapped[Amount]
    model_name: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(50))
    client_order_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    features: Mapped[Json | None]
    trace_id: Mapped[TraceId]
    decided_at: Mapped[Created]


# --- position-monitor ----------------------------------------------------------------------------


class MonitoredPosition(Base):
    """A position position-monitor protects: its stops, its trailing state and its exit.

    The trailing state is written before anything acts on it, and an exit's client order id is
    written before the exit is sent, so a restart resumes both as they were.
    """

    __tablename__ = "monitored_positions"

    position_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    symbol: Mapped[Symbol] = mapped_column(index=True)
    status: Mapped[str] = mapped_column(String(8), index=True)
    quantity: Mapped[Amount]
    entry_price: Mapped[Amount]
    opened_ms: Mapped[int] = mapped_column(BigInteger)
    # The portfolio's fill sequence of the latest update applied (None: not known).
    sequence: Mapped[int | None] = mapped_column(BigInteger)
    stops: Mapped[Json]
    # The entry order the position came from (an exit links to it).
    entry_client_order_id: Mapped[str | None] = mapped_column(String(64))
    entry_traceparent: Mapped[str | None] = mapped_column(String(64))
    best_price: Mapped[Decimal | None]
    trailing_active: Mapped[bool] = mapped_column(Boolean, default=False)
    trailing_level: Mapped[Decimal | None]
    exit_round: Mapped[int] = mapped_column(Integer, default=1)
    exit_reason: Mapped[str | None] = mapped_column(String(16))
    exit_stage: Mapped[str | None] = mapped_column(String(16))
    exit_client_order_id: Mapped[str | None] = mapped_column(String(64))
    exit_trigger_price: Mapped[Decimal | None]
    exit_observed_price: Mapped[Decimal | None]
    exit_quantity: Mapped[Decimal | None]
    exit_started_ms: Mapped[int | None] = mapped_column(BigInteger)
    exit_outcome: Mapped[str | None] = mapped_column(String(16))
    exit_detail: Mapped[str] = mapped_column(Text, default="")
    trace_id: Mapped[TraceId]
    closed_ms: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[Created]
