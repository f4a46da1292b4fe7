"""Sizing with rl-training's champion policy: loaded through rl-training's contract, checked
against its sha256, reloaded when the champion changes, and never in the way: without a usable
policy the order is sized by the rules, and the reason is logged and put on the span."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import httpx

from backend.infra.observability import BoundLogger
from backend.infra.service import Resources
from backend.trading.rlartifact import (
    InvalidPolicyArtifact,
    LinearPolicy,
    artifact_to_json,
    observation,
    policy_from_json,
)
from backend.trading.sizing import SizeDecision, SizingParams, size_order, size_order_for_exposure
from microservices.contracts import Refused, UpstreamError
from microservices.contracts.rl_training import RlTrainingClient

from .metrics import SIZING

Source = Literal["rules", "policy"]


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A champion whose artifact checked out against its sha256."""

    version: str
    sha256: str
    policy: LinearPolicy
    window: int
    levels: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Sizing:
    """How an order was sized: the size, by what, and why not by the policy if it was not."""

    decision: SizeDecision
    source: Source
    policy_version: str = ""
    target_exposure: float | None = None
    fallback_reason: str = ""

    def annotate(self, span: Any) -> None:
        span.set_attribute("sizing.source", self.source)
        span.set_attribute("policy_version", self.policy_version)
        if self.target_exposure is not None:
            span.set_attribute("policy.target_exposure", self.target_exposure)
        if self.fallback_reason:
            span.set_attribute("sizing.fallback_reason", self.fallback_reason)


class ChampionPolicy:
    """The champion policy trading-bot sizes with, when `BOT_SIZING_POLICY=rl-champion`."""

    def __init__(self, enabled: bool, refresh_s: float, logger: BoundLogger) -> None:
        self.enabled = enabled
        self.refresh_s = refresh_s
        self.log = logger
        self.current: LoadedPolicy | None = None
        self.unavailable = "no champion policy loaded yet"

    # Loading -----------------------------------------------------------------------------------

    async def refresh_loop(self, resources: Resources) -> None:
        """Background task: ask for the champion every `refresh_s`."""
        while True:
            assert resources.http is not None
            await self.refresh(resources.http)
            await asyncio.sleep(self.refresh_s)

    async def refresh(self, http: httpx.AsyncClient) -> None:
        """Load the champion if it changed; drop it if it is gone or does not check out."""
        try:
            answer = await RlTrainingClient(http).champion()
        except Refused as exc:
            reason = "rl-training has no champion policy" if exc.status == 404 else str(exc)
            self._drop(reason)
            return
        except UpstreamError as exc:
            if self.current is None:
                self._drop(f"rl-training unavailable: {exc.detail}")
            else:  # a verified policy stays in use while rl-training is away
                self.log.warning(
                    "champion policy not refreshed; keeping the loaded one",
                    policy_version=self.current.version,
                    error=exc.detail[:300],
                )
            return
        if self.current is not None and self.current.sha256 == answer.artifact_sha256:
            return
        text = artifact_to_json(answer.artifact)
        try:
            policy, artifact = policy_from_json(text, answer.artifact_sha256)
            if artifact.get("version") != answer.version:
                raise InvalidPolicyArtifact(
                    f"artifact version {artifact.get('version')!r} is not {answer.version!r}"
                )
            levels = tuple(float(level) for level in artifact["levels"])
            if any(not 0.0 <= level <= 1.0 for level in levels):
                raise InvalidPolicyArtifact(f"levels {levels} are not exposures in [0, 1]")
        except (InvalidPolicyArtifact, KeyError, TypeError, ValueError) as exc:
            self._drop(f"champion {answer.version} refused: {exc}")
            return
        self.current = LoadedPolicy(
            answer.version,
            answer.artifact_sha256,
            policy,
            int(artifact["observation"]["window"]),
            levels,
        )
        self.unavailable = ""
        self.log.info(
            "champion policy loaded",
            policy_version=answer.version,
            artifact_sha256=answer.artifact_sha256,
        )

    def _drop(self, reason: str) -> None:
        if self.current is not None or reason != self.unavailable:
            # Said once per change, not at every refresh.
            self.log.warning("sizing by the rules: no usable champion policy", reason=reason)
        self.current, self.unavailable = None, reason

    # Sizing ------------------------------------------------------------------------------------

    def size(
        self,
        *,
        equity: Decimal,
        held: Decimal,
        price: Decimal,
        confidence: float,
        side: str,
        prices: Sequence[Decimal],
        params: SizingParams,
    ) -> Sizing:
        """The order's size: by the champion policy when enabled and loaded, else the rules."""
        sizing = self._size(equity, held, price, confidence, side, prices, params)
        SIZING.labels(sizing.source).inc()
        return sizing

    def _size(
        self,
        equity: Decimal,
        held: Decimal,
        price: Decimal,
        confidence: float,
        side: str,
        prices: Sequence[Decimal],
        params: SizingParams,
    ) -> Sizing:
        rules = size_order(equity, price, confidence, params)
        if not self.enabled:
            return Sizing(rules, "rules")
        loaded = self.current
        if loaded is None:
            return Sizing(rules, "rules", fallback_reason=self.unavailable)
        exposure = float(held * price / equity) if equity > 0 else 0.0
        try:
            obs = observation(prices, loaded.window, exposure)
            target = loaded.levels[loaded.policy.act(obs)]
        except Exception as exc:  # the policy is advice: a failure of it never stops a trade
            reason = f"policy {loaded.version} not applied: {type(exc).__name__}: {exc}"
            return Sizing(rules, "rules", loaded.version, fallback_reason=reason)
        decision = size_order_for_exposure(
            equity, price, confidence, params, side=side, target_exposure=target
        )
        return Sizing(decision, "policy", loaded.version, target)
