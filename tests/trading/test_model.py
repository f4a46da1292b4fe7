import json
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from backend.trading.features import FEATURE_NAMES, compute_features, make_training_set
from backend.trading.model import (
    InvalidModelArtifact,
    artifact_from_json,
    artifact_to_json,
    predict,
    probability_up,
    simulate_prices,
    train_initial_model,
    train_model,
)


@pytest.fixture(scope="module")
def artifact() -> dict[str, Any]:
    return train_initial_model(seed=7, steps=6_000)


@pytest.fixture(scope="module")
def training_data() -> tuple[np.ndarray, np.ndarray]:
    return make_training_set(simulate_prices(seed=7, steps=6_000), horizon=1)


def test_training_is_reproducible_for_a_seed(artifact: dict[str, Any]) -> None:
    assert train_initial_model(seed=7, steps=6_000) == artifact


def test_different_seeds_train_different_models(artifact: dict[str, Any]) -> None:
    assert train_initial_model(seed=8, steps=6_000)["version"] != artifact["version"]


def test_holdout_metrics_are_reported(artifact: dict[str, Any]) -> None:
    metrics = artifact["metrics"]
    assert 0.0 <= metrics["holdout_accuracy"] <= 1.0
    assert metrics["holdout_log_loss"] > 0.0
    assert metrics["n_train"] > metrics["n_holdout"] > 0
    # The simulated last price bounces between bid and ask, which a linear model can learn.
    assert metrics["holdout_accuracy"] > 0.55


def test_artifact_is_plain_json_data(artifact: dict[str, Any]) -> None:
    assert json.loads(json.dumps(artifact)) == artifact
    assert artifact["feature_names"] == list(FEATURE_NAMES)
    assert artifact["classes"] == [-1, 1]
    assert artifact["version"].startswith("logreg-sim-")


def test_prediction_after_json_round_trip_equals_prediction_before(
    artifact: dict[str, Any],
) -> None:
    loaded = artifact_from_json(artifact_to_json(artifact))
    for seed in range(5):
        features = compute_features(simulate_prices(seed=100 + seed, steps=40))
        assert predict(loaded, features) == predict(artifact, features)


def test_numpy_probability_matches_scikit_learn(
    artifact: dict[str, Any], training_data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = training_data
    split = artifact["metrics"]["n_train"]
    scaler = StandardScaler().fit(x[:split])
    reference = LogisticRegression(max_iter=1_000).fit(scaler.transform(x[:split]), y[:split])
    expected = reference.predict_proba(scaler.transform(x[split : split + 50]))[:, 1]
    ours = [probability_up(artifact, row) for row in x[split : split + 50]]
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12)


def fixed_artifact(intercept: float) -> dict[str, Any]:
    """A model that ignores features, so its probability is sigmoid(intercept)."""
    n = len(FEATURE_NAMES)
    return {
        "format": "qt-logreg/1",
        "version": "fixed-1",
        "feature_names": list(FEATURE_NAMES),
        "means": [0.0] * n,
        "scales": [1.0] * n,
        "coefficients": [0.0] * n,
        "intercept": intercept,
        "classes": [-1, 1],
        "metrics": {},
    }


@pytest.mark.parametrize(
    ("p_up", "direction", "confidence"),
    [(0.8, "BUY", 0.8), (0.2, "SELL", 0.8), (0.53, "HOLD", 0.53), (0.47, "HOLD", 0.53)],
)
def test_direction_has_a_hold_band_around_one_half(
    p_up: float, direction: str, confidence: float
) -> None:
    model = fixed_artifact(float(np.log(p_up / (1 - p_up))))
    signal = predict(model, [0.0] * len(FEATURE_NAMES), hold_band=0.05)
    assert signal.direction == direction
    assert signal.confidence == pytest.approx(confidence)
    assert signal.model_version == "fixed-1"


def test_extreme_logits_stay_within_zero_and_one() -> None:
    for intercept in (-1e6, 1e6):
        signal = predict(fixed_artifact(intercept), [0.0] * len(FEATURE_NAMES))
        assert 0.0 <= signal.confidence <= 1.0


def test_wrong_feature_count_is_rejected(artifact: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="expected 9 features"):
        predict(artifact, [0.0, 1.0])


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda a: a.pop("coefficients"),
        lambda a: a.update(format="pickle"),
        lambda a: a.update(scales=[0.0] * len(FEATURE_NAMES)),
        lambda a: a.update(means=[1.0]),
        lambda a: a.update(intercept="1; import os"),
        lambda a: a.update(classes=[0, 1]),
    ],
)
def test_malformed_artifacts_are_rejected(corrupt: Any) -> None:
    model = fixed_artifact(0.0)
    corrupt(model)
    with pytest.raises(InvalidModelArtifact):
        artifact_from_json(json.dumps(model))


def test_train_model_needs_both_classes() -> None:
    x = np.zeros((100, len(FEATURE_NAMES)))
    with pytest.raises(ValueError, match="both classes"):
        train_model(x, np.ones(100, dtype=np.int64))
