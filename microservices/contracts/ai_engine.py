"""ai-engine's public contract: the prediction request and answer, and the model registry."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field

from backend.trading.features import WINDOW

from ._client import ServiceClient

SERVICE = "ai-engine"


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


class AiEngineClient(ServiceClient):
    """ai-engine's API as its callers use it."""

    service = SERVICE

    async def predict(
        self, symbol: str, prices: Sequence[Decimal], *, source_id: str | None = None
    ) -> PredictionPublic:
        """`POST /predict`: the model's signal for `symbol` after `prices` (oldest first)."""
        body = PredictRequest(symbol=symbol, prices=list(prices), source_id=source_id)
        return await self._call("POST", "/predict", PredictionPublic, body=body)
