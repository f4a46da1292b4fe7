"""ai-engine HTTP schemas: prediction request and response, registry entries."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field

from backend.trading.features import WINDOW


class PredictRequest(BaseModel):
    """Recent prices of one symbol, oldest first; the last WINDOW of them are used."""

    symbol: str = Field(min_length=1, max_length=32)
    prices: list[Decimal] = Field(min_length=WINDOW, max_length=10_000)
    source_id: str | None = Field(
        default=None,
        max_length=128,
        description="What the prediction is for (e.g. the tick's event id). The same model, "
        "symbol and source give the same signal id, so a retried decision is recognisable.",
    )


class PredictionPublic(BaseModel):
    symbol: str
    direction: Literal["BUY", "SELL", "HOLD"]
    confidence: float
    probability_up: float
    model_version: str
    signal_id: str
    features: dict[str, float]


class ModelPublic(BaseModel):
    name: str
    version: str
    stage: str
    serving: bool
    metrics: dict[str, Any] | None
    artifact_sha256: str | None
    artifact_uri: str | None = Field(
        description="A file holding a copy of the artifact; only for models registered before "
        "artifacts were stored in the registry."
    )
    created_at: datetime
    promoted_at: datetime | None


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int
    serving: str | None
