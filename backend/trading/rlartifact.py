"""A trained policy as data: the `rl-linear-v1` artifact (JSON with a sha256, never pickle), the
linear policy it holds, and the observation it acts on, built from a price series.

numpy only: trading-bot loads and runs policies without the training stack (Gymnasium).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

ARTIFACT_FORMAT = "rl-linear-v1"
RETURN_SCALE = 100.0
"""Observed returns are in percent (as `rlenv` observes them)."""
RETURN_CAP = 50.0


class InvalidPolicyArtifact(ValueError):
    """Policy artifact text that is not a valid policy, or does not match its sha256."""


@dataclass(frozen=True, slots=True)
class LinearPolicy:
    """Action = argmax(obs @ weights + bias); weights are (observation size, actions)."""

    weights: np.ndarray
    bias: np.ndarray

    @classmethod
    def from_vector(cls, vector: np.ndarray, obs_size: int, actions: int) -> LinearPolicy:
        split = obs_size * actions
        return cls(vector[:split].reshape(obs_size, actions), vector[split:])

    def act(self, obs: np.ndarray) -> int:
        return int(np.argmax(obs.astype(np.float64) @ self.weights + self.bias))


def observation(prices: Iterable[Decimal | float], window: int, exposure: float) -> np.ndarray:
    """What a policy observes at the last price: the last `window` log-returns in percent,
    clipped to ±50, then the exposure (held value / equity, clipped to 0..2), as the training
    environment builds it. Raises ValueError with fewer than `window + 1` prices."""
    prices = list(prices)  # a deque does not slice
    if len(prices) < window + 1:
        raise ValueError(f"need {window + 1} prices for a window of {window}, got {len(prices)}")
    last = np.array([float(p) for p in prices[-(window + 1) :]], dtype=np.float64)
    if not np.all(last > 0):
        raise ValueError("prices must be positive")
    obs = np.empty(window + 1, dtype=np.float32)
    obs[:window] = np.clip(np.log(last[1:] / last[:-1]) * RETURN_SCALE, -RETURN_CAP, RETURN_CAP)
    obs[window] = min(max(exposure, 0.0), 2.0) if math.isfinite(exposure) else 0.0
    return obs


def artifact_to_json(artifact: dict[str, Any]) -> str:
    return canonical_json(artifact)


def artifact_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def policy_from_json(text: str, sha256: str) -> tuple[LinearPolicy, dict[str, Any]]:
    """Parse an artifact after checking its digest; raises `InvalidPolicyArtifact`."""
    actual = artifact_sha256(text)
    if actual != sha256:
        raise InvalidPolicyArtifact(
            f"artifact does not match its sha256 (recorded {sha256}, computed {actual})"
        )
    try:
        artifact = json.loads(text)
        if artifact["format"] != ARTIFACT_FORMAT:
            raise InvalidPolicyArtifact(f"unknown artifact format {artifact['format']!r}")
        weights = np.array(artifact["weights"], dtype=np.float64)
        bias = np.array(artifact["bias"], dtype=np.float64)
        window = int(artifact["observation"]["window"])
        actions = len(artifact["levels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidPolicyArtifact(f"not a policy artifact: {exc}") from exc
    if weights.shape != (window + 1, actions) or bias.shape != (actions,):
        raise InvalidPolicyArtifact(f"weights {weights.shape} do not fit window {window}")
    return LinearPolicy(weights, bias), artifact


def canonical_json(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
