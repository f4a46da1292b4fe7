"""Price-window features shared by model training and live serving."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

RETURN_LAGS = (1, 5, 10, 20)
LONG_WINDOW = 20
SHORT_WINDOW = 5
RSI_WINDOW = 14
# The longest look-back needs LONG_WINDOW returns, hence one more price.
WINDOW = LONG_WINDOW + 1

FEATURE_NAMES: tuple[str, ...] = (
    *(f"ret_{lag}" for lag in RETURN_LAGS),
    "vol_20",
    "vol_ratio_5_20",
    "momentum_5_20",
    "rsi_14",
    "zscore_20",
)


class InsufficientHistory(ValueError):
    """Raised when a price window is shorter than the features need."""


def feature_matrix(windows: FloatArray) -> FloatArray:
    """Features for each row of `windows` (shape (n, WINDOW), oldest price first).

    This is the single implementation: `compute_features` calls it with one row.
    """
    if windows.ndim != 2 or windows.shape[1] != WINDOW:
        raise InsufficientHistory(f"expected windows of shape (n, {WINDOW}), got {windows.shape}")
    if not np.all(np.isfinite(windows)) or np.any(windows <= 0):
        raise ValueError("prices must be finite and positive")
    logp = np.log(windows)
    last = logp[:, -1]
    returns = np.diff(logp, axis=1)
    columns = [last - logp[:, -1 - lag] for lag in RETURN_LAGS]

    vol_long = returns[:, -LONG_WINDOW:].std(axis=1)
    vol_short = returns[:, -SHORT_WINDOW:].std(axis=1)
    # A flat window has zero volatility; ratios fall back to neutral values instead of inf/nan.
    safe_vol_long = np.where(vol_long > 0, vol_long, 1.0)
    columns.append(vol_long)
    columns.append(np.where(vol_long > 0, vol_short / safe_vol_long, 1.0))

    sma_short = windows[:, -SHORT_WINDOW:].mean(axis=1)
    sma_long = windows[:, -LONG_WINDOW:].mean(axis=1)
    columns.append(sma_short / sma_long - 1.0)

    recent = returns[:, -RSI_WINDOW:]
    gains = np.clip(recent, 0.0, None).sum(axis=1)
    losses = np.clip(-recent, 0.0, None).sum(axis=1)
    total = gains + losses
    # Scaled to [-1, 1] (RSI 0..100 mapped linearly) so it sits near the other features.
    columns.append(np.where(total > 0, (gains - losses) / np.where(total > 0, total, 1.0), 0.0))

    std_long = windows[:, -LONG_WINDOW:].std(axis=1)
    columns.append(
        np.where(std_long > 0, (windows[:, -1] - sma_long) / np.where(std_long > 0, std_long, 1), 0)
    )
    return np.column_stack(columns).astype(np.float64)


def _as_prices(prices: Sequence[float | Decimal] | FloatArray) -> FloatArray:
    array = np.asarray([float(p) for p in prices], dtype=np.float64)
    if array.ndim != 1:
        raise ValueError("prices must be one-dimensional")
    return array


def compute_features(prices: Sequence[float | Decimal] | FloatArray) -> FloatArray:
    """Feature vector (ordered as FEATURE_NAMES) from the most recent WINDOW prices."""
    array = _as_prices(prices)
    if array.size < WINDOW:
        raise InsufficientHistory(f"need at least {WINDOW} prices, got {array.size}")
    row: FloatArray = feature_matrix(array[-WINDOW:].reshape(1, WINDOW))[0]
    return row


def make_training_set(
    prices: Sequence[float | Decimal] | FloatArray, horizon: int
) -> tuple[FloatArray, NDArray[np.int64]]:
    """Features X and labels y, where y is the sign (+1/-1) of the return `horizon` steps ahead.

    Rows whose forward return is exactly zero carry no direction and are left out.
    """
    if horizon < 1:
        raise ValueError("horizon must be at least 1")
    array = _as_prices(prices)
    if array.size < WINDOW + horizon:
        raise InsufficientHistory(
            f"need at least {WINDOW + horizon} prices for horizon {horizon}, got {array.size}"
        )
    windows = np.lib.stride_tricks.sliding_window_view(array, WINDOW)[
        : array.size - WINDOW - horizon + 1
    ]
    x = feature_matrix(np.ascontiguousarray(windows))
    now_prices = array[WINDOW - 1 : array.size - horizon]
    future_prices = array[WINDOW - 1 + horizon :]
    forward = np.log(future_prices / now_prices)
    keep = forward != 0
    y = np.where(forward > 0, 1, -1).astype(np.int64)
    return x[keep], y[keep]
