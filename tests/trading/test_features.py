from decimal import Decimal

import numpy as np
import pytest

from backend.trading.features import (
    FEATURE_NAMES,
    WINDOW,
    InsufficientHistory,
    compute_features,
    make_training_set,
)


def random_walk(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))


def test_feature_vector_matches_feature_names() -> None:
    assert compute_features(random_walk(50)).shape == (len(FEATURE_NAMES),)


def test_short_window_is_a_clear_error() -> None:
    with pytest.raises(InsufficientHistory, match=f"need at least {WINDOW} prices, got 5"):
        compute_features([100.0] * 5)


def test_only_the_most_recent_window_matters() -> None:
    prices = random_walk(100)
    np.testing.assert_array_equal(compute_features(prices), compute_features(prices[-WINDOW:]))


def test_decimal_prices_give_the_same_features_as_floats() -> None:
    prices = [round(float(p), 2) for p in random_walk(30)]
    decimals = [Decimal(str(p)) for p in prices]
    np.testing.assert_allclose(compute_features(decimals), compute_features(prices))


def test_flat_prices_give_finite_neutral_features() -> None:
    features = compute_features([100.0] * WINDOW)
    assert np.all(np.isfinite(features))
    assert features[FEATURE_NAMES.index("ret_1")] == 0.0


def test_non_positive_prices_are_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        compute_features([100.0] * (WINDOW - 1) + [0.0])


def test_training_rows_equal_serving_features_at_the_same_instant() -> None:
    prices = random_walk(200, seed=3)
    x, _ = make_training_set(prices, horizon=1)
    np.testing.assert_allclose(x[0], compute_features(prices[:WINDOW]))
    np.testing.assert_allclose(x[-1], compute_features(prices[:-1]))


def test_labels_are_the_sign_of_the_forward_return() -> None:
    prices = random_walk(120, seed=4)
    horizon = 3
    _, y = make_training_set(prices, horizon)
    now = prices[WINDOW - 1 : len(prices) - horizon]
    expected = np.where(prices[WINDOW - 1 + horizon :] > now, 1, -1)
    np.testing.assert_array_equal(y, expected)


def test_rows_without_a_forward_move_are_left_out() -> None:
    prices = list(random_walk(40, seed=5))
    prices.append(prices[-1])
    x, y = make_training_set(prices, horizon=1)
    assert len(x) == len(y) == len(prices) - WINDOW - 1


def test_training_set_needs_window_plus_horizon_prices() -> None:
    with pytest.raises(InsufficientHistory, match="horizon 5"):
        make_training_set(random_walk(WINDOW + 4), horizon=5)
    with pytest.raises(ValueError):
        make_training_set(random_walk(100), horizon=0)
