"""Direction model: train a standardised logistic regression, export it as JSON data, predict."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.preprocessing import StandardScaler

from backend.trading.features import FEATURE_NAMES, FloatArray, make_training_set
from backend.trading.marketsim import MarketSimulator, SymbolSpec
from backend.trading.types import Direction, Symbol

ARTIFACT_FORMAT = "qt-logreg/1"
CLASSES = (-1, 1)
DEFAULT_HOLD_BAND = 0.05


class InvalidModelArtifact(ValueError):
    """Raised when a model artifact dict is malformed or inconsistent."""


@dataclass(frozen=True, slots=True)
class Signal:
    """A model's call: direction, probability of that direction, and which model made it."""

    direction: Direction
    confidence: float
    model_version: str
    probability_up: float


def train_model(
    x: FloatArray,
    y: NDArray[np.int64],
    *,
    feature_names: Sequence[str] = FEATURE_NAMES,
    holdout_fraction: float = 0.25,
    regularisation_c: float = 1.0,
    name: str = "logreg",
) -> dict[str, Any]:
    """Fit on the oldest rows, score on the newest `holdout_fraction`, return a JSON-safe artifact.

    The split is chronological: shuffling a time series would leak the future into training.
    """
    if x.ndim != 2 or x.shape[1] != len(feature_names):
        raise ValueError(f"x must have {len(feature_names)} columns, got shape {x.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError("x and y must have the same number of rows")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError("holdout_fraction must be between 0 and 1")
    if set(np.unique(y).tolist()) != set(CLASSES):
        raise ValueError(f"y must contain both classes {CLASSES}")
    split = round(x.shape[0] * (1.0 - holdout_fraction))
    if split < 10 or x.shape[0] - split < 10:
        raise ValueError("need at least 10 training and 10 holdout rows")
    x_train, x_test, y_train, y_test = x[:split], x[split:], y[:split], y[split:]

    scaler = StandardScaler().fit(x_train)
    classifier = LogisticRegression(C=regularisation_c, max_iter=1_000)
    classifier.fit(scaler.transform(x_train), y_train)

    proba_test = classifier.predict_proba(scaler.transform(x_test))
    proba_train = classifier.predict_proba(scaler.transform(x_train))
    metrics = {
        "holdout_accuracy": float(
            accuracy_score(y_test, classifier.classes_[proba_test.argmax(1)])
        ),
        "holdout_log_loss": float(log_loss(y_test, proba_test, labels=classifier.classes_)),
        "train_accuracy": float(
            accuracy_score(y_train, classifier.classes_[proba_train.argmax(1)])
        ),
        "holdout_base_rate_up": float(np.mean(y_test == 1)),
        "n_train": int(split),
        "n_holdout": int(x.shape[0] - split),
    }
    artifact: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "feature_names": list(feature_names),
        "means": [float(v) for v in scaler.mean_],
        # StandardScaler already replaces zero scales by 1, so dividing is always safe.
        "scales": [float(v) for v in scaler.scale_],
        "coefficients": [float(v) for v in classifier.coef_[0]],
        "intercept": float(classifier.intercept_[0]),
        "classes": [int(c) for c in classifier.classes_],
        "metrics": metrics,
    }
    artifact["version"] = f"{name}-{_content_hash(artifact)}"
    return validate_artifact(artifact)


def _content_hash(artifact: Mapping[str, Any]) -> str:
    body = {key: value for key, value in artifact.items() if key != "version"}
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:12]


def validate_artifact(artifact: Mapping[str, Any]) -> dict[str, Any]:
    """Check that an artifact is complete and self-consistent; return it as a plain dict."""
    required = (
        "format",
        "version",
        "feature_names",
        "means",
        "scales",
        "coefficients",
        "intercept",
        "classes",
        "metrics",
    )
    missing = [key for key in required if key not in artifact]
    if missing:
        raise InvalidModelArtifact(f"missing key(s): {', '.join(missing)}")
    if artifact["format"] != ARTIFACT_FORMAT:
        raise InvalidModelArtifact(f"unsupported format {artifact['format']!r}")
    if not isinstance(artifact["version"], str) or not artifact["version"]:
        raise InvalidModelArtifact("version must be a non-empty string")
    names = artifact["feature_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidModelArtifact("feature_names must be a list of strings")
    for key in ("means", "scales", "coefficients"):
        values = artifact[key]
        if not isinstance(values, list) or len(values) != len(names):
            raise InvalidModelArtifact(f"{key} must be a list of {len(names)} numbers")
        if not all(_is_finite_number(v) for v in values):
            raise InvalidModelArtifact(f"{key} must hold finite numbers")
    if any(v <= 0 for v in artifact["scales"]):
        raise InvalidModelArtifact("scales must be positive")
    if not _is_finite_number(artifact["intercept"]):
        raise InvalidModelArtifact("intercept must be a finite number")
    if list(artifact["classes"]) != list(CLASSES):
        raise InvalidModelArtifact(f"classes must be {list(CLASSES)}")
    if not isinstance(artifact["metrics"], Mapping):
        raise InvalidModelArtifact("metrics must be a mapping")
    return dict(artifact)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def artifact_to_json(artifact: Mapping[str, Any]) -> str:
    """Serialise an artifact; loading it back is plain data parsing, never code execution."""
    return json.dumps(validate_artifact(artifact), sort_keys=True)


def artifact_from_json(text: str) -> dict[str, Any]:
    """Parse and validate an artifact produced by `artifact_to_json`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidModelArtifact(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidModelArtifact("artifact must be a JSON object")
    return validate_artifact(data)


def probability_up(artifact: Mapping[str, Any], features: Sequence[float] | FloatArray) -> float:
    """P(next-horizon return > 0) computed from the artifact's numbers alone."""
    x = np.asarray(features, dtype=np.float64)
    coefficients = np.asarray(artifact["coefficients"], dtype=np.float64)
    if x.shape != coefficients.shape:
        raise ValueError(f"expected {coefficients.size} features, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features must be finite")
    z = (x - np.asarray(artifact["means"])) / np.asarray(artifact["scales"])
    logit = float(z @ coefficients) + float(artifact["intercept"])
    # Written in the form that cannot overflow for large |logit|.
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    e = math.exp(logit)
    return e / (1.0 + e)


def predict(
    artifact: Mapping[str, Any],
    features: Sequence[float] | FloatArray,
    *,
    hold_band: float = DEFAULT_HOLD_BAND,
) -> Signal:
    """BUY/SELL when P(up) is outside 0.5 ± hold_band, HOLD inside; confidence is P(direction)."""
    if not 0.0 <= hold_band < 0.5:
        raise ValueError("hold_band must be in [0, 0.5)")
    p_up = probability_up(artifact, features)
    version = str(artifact["version"])
    if p_up >= 0.5 + hold_band:
        return Signal("BUY", p_up, version, p_up)
    if p_up <= 0.5 - hold_band:
        return Signal("SELL", 1.0 - p_up, version, p_up)
    return Signal("HOLD", max(p_up, 1.0 - p_up), version, p_up)


def simulate_prices(seed: int, steps: int, tick_interval_ms: int = 1_000) -> FloatArray:
    """Last-trade prices of one simulated symbol, as floats for feature math."""
    spec = SymbolSpec(Symbol("SIM"), Decimal(100), Decimal("0.01"))
    simulator = MarketSimulator([spec], seed=seed, tick_interval_ms=tick_interval_ms)
    return np.fromiter((float(q.last) for q in simulator.ticks(steps)), np.float64, steps)


def train_initial_model(seed: int = 7, *, steps: int = 20_000, horizon: int = 1) -> dict[str, Any]:
    """Simulate history with the market simulator and train the first model on it."""
    x, y = make_training_set(simulate_prices(seed, steps), horizon)
    artifact = train_model(x, y, name="logreg-sim")
    artifact["training"] = {"seed": seed, "steps": steps, "horizon": horizon, "source": "marketsim"}
    return artifact
