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
    alias: Literal["champion", "challenger"] | None = Field(
        default=None,
        description="The registry alias the version holds: `champion` serves (stage `active`), "
        "`challenger` runs in shadow, scored by clm but not traded.",
    )


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int
    serving: str | None


Alias = Literal["champion", "challenger"]


class ModelRegister(BaseModel):
    """A trained artifact to add to the registry (`POST /models`), optionally under an alias."""

    artifact: dict[str, Any]
    alias: Alias | None = None


class AliasMove(BaseModel):
    """`POST /models/aliases/{alias}`: the version the alias moves to."""

    version: str = Field(min_length=1, max_length=50)
    reason: str = Field(default="", max_length=500)


class ArtifactPublic(BaseModel):
    """A version's artifact (data: loading it never runs code), checked against its sha256."""

    version: str
    sha256: str
    artifact: dict[str, Any]


class AliasMoved(BaseModel):
    alias: Alias
    version: str
    previous: str | None
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

    async def models(self) -> ModelsPublic:
        """`GET /models`: every version in the registry, and which one serves."""
        return await self._call("GET", "/models", ModelsPublic)

    async def artifact(self, version: str) -> ArtifactPublic:
        """`GET /models/{version}/artifact`: the version's artifact, checked against its sha256."""
        return await self._call("GET", f"/models/{version}/artifact", ArtifactPublic)

    async def register(self, artifact: dict[str, Any], alias: Alias | None) -> ModelPublic:
        """`POST /models`: add a trained version, optionally as `challenger` (or `champion`)."""
        body = ModelRegister(artifact=artifact, alias=alias)
        return await self._call("POST", "/models", ModelPublic, body=body)

    async def move_alias(self, alias: Alias, version: str, reason: str = "") -> AliasMoved:
        """`POST /models/aliases/{alias}`: point `alias` at `version`; `champion` serves at once."""
        body = AliasMove(version=version, reason=reason)
        return await self._call("POST", f"/models/aliases/{alias}", AliasMoved, body=body)

    async def rollback(self) -> AliasMoved:
        """`POST /models/aliases/champion/rollback`: the previous champion serves again."""
        return await self._call("POST", "/models/aliases/champion/rollback", AliasMoved)
