"""clm's public contract (its side port): status, retrain on demand, promote, rollback."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ._client import ServiceClient

SERVICE = "clm"


class RetrainRequestBody(BaseModel):
    reason: str = Field(default="", max_length=500)


class RetrainAccepted(BaseModel):
    trigger: str
    model_version: str | None = Field(
        description="The challenger trained and registered (null when training failed)."
    )


class PromoteBody(BaseModel):
    reason: str = Field(default="promoted on request", max_length=500)


class AliasChange(BaseModel):
    model_version: str
    previous_version: str | None


class ClmStatus(BaseModel):
    """What clm scores and decides: aliases, live scores, the last drift check, decisions."""

    champion: str | None
    challenger: str | None
    reference_rows: int
    live_rows: int
    retrain_pending: dict[str, Any] | None
    duel: dict[str, Any]
    scores: list[dict[str, Any]]
    drift: dict[str, Any] | None
    decisions: list[dict[str, Any]]


class ClmClient(ServiceClient):
    """clm's API as its callers use it."""

    service = SERVICE

    async def status(self) -> ClmStatus:
        return await self._call("GET", "/status", ClmStatus)

    async def rollback(self) -> AliasChange:
        return await self._call("POST", "/rollback", AliasChange)
