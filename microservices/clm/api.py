"""clm's HTTP API on its side port: status, retrain on demand, promote, rollback (the POSTs
need the bearer token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException

from backend.infra.service import provided
from microservices.contracts import Refused
from microservices.contracts.clm import (
    AliasChange,
    ClmStatus,
    PromoteBody,
    RetrainAccepted,
    RetrainRequestBody,
)

from .manager import LearningManager, NothingToPromote

router = APIRouter()

Manager = Annotated[LearningManager, Depends(provided(LearningManager))]


@router.get("/status", response_model=ClmStatus)
async def status(manager: Manager) -> ClmStatus:
    return ClmStatus.model_validate(manager.status())


@router.post("/retrain", response_model=RetrainAccepted)
async def retrain(manager: Manager, body: RetrainRequestBody | None = None) -> RetrainAccepted:
    """Train a challenger now on the ticks held; it goes into shadow."""
    request = manager.ask_retrain(body.reason if body else "")
    try:
        version = await manager.retrain()
    except Refused as exc:
        raise HTTPException(409, f"ai-engine refused the new version: {exc}") from exc
    return RetrainAccepted(trigger=request.trigger, model_version=version)


@router.post("/promote", response_model=AliasChange)
async def promote(manager: Manager, body: PromoteBody | None = None) -> AliasChange:
    """Promote the challenger now, whatever its score (an operator's decision)."""
    previous = manager.champion.version if manager.champion else None
    try:
        version = await manager.promote((body or PromoteBody()).reason, forced=True)
    except NothingToPromote as exc:
        raise HTTPException(409, str(exc)) from exc
    except Refused as exc:
        raise HTTPException(409, f"ai-engine refused the alias move: {exc}") from exc
    return AliasChange(model_version=version, previous_version=previous)


@router.post("/rollback", response_model=AliasChange)
async def rollback(manager: Manager) -> AliasChange:
    """The previous champion serves again (one alias move in ai-engine's registry)."""
    try:
        version, replaced = await manager.rollback()
    except Refused as exc:
        raise HTTPException(409, f"nothing to roll back to: {exc}") from exc
    return AliasChange(model_version=version, previous_version=replaced)
