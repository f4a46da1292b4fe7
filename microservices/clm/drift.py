"""clm's statistics: input drift (PSI and the two-sample KS test against the training
distribution), concept drift (ADWIN on the live correctness stream), live scoring (hit rate,
Brier score, calibration) and the promotion rule.

Thresholds (docs/CLM.md): PSI < 0.1 stable, 0.1-0.25 moderate, > 0.25 drift; a feature drifts
when its PSI exceeds `psi_threshold` *and* the KS test rejects "same distribution" at
`ks_alpha`. Requiring both keeps a large sample's tiny-but-significant KS shifts, and a
small sample's noisy PSI, from raising an alarm alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.stats import ks_2samp

FloatArray = NDArray[np.float64]

PSI_BINS = 10
PSI_FLOOR = 1e-4
"""A bin's share is floored here so an empty bin gives a large but finite PSI term."""
CALIBRATION_BINS = 10


def psi(reference: FloatArray, current: FloatArray, bins: int = PSI_BINS) -> float:
    """Population stability index of `current` against `reference`, over quantile bins of the
    reference (each holds about 1/bins of it): sum((c - r) * ln(c / r))."""
    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    if reference.ndim != 1 or current.ndim != 1:
        raise ValueError("psi takes two one-dimensional samples")
    if reference.size < bins or current.size == 0:
        raise ValueError(
            f"psi needs at least {bins} reference values and one current value, "
            f"got {reference.size} and {current.size}"
        )
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    ref_share = np.bincount(
        np.searchsorted(edges, reference, side="right"), minlength=edges.size + 1
    )
    cur_share = np.bincount(np.searchsorted(edges, current, side="right"), minlength=edges.size + 1)
    r = np.maximum(ref_share / reference.size, PSI_FLOOR)
    c = np.maximum(cur_share / current.size, PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def ks_pvalue(reference: FloatArray, current: FloatArray) -> tuple[float, float]:
    """The two-sample Kolmogorov-Smirnov statistic and its p-value (asymptotic: exact is ~5x
    slower at these sizes and no more useful for an alarm)."""
    result = ks_2samp(reference, current, method="asymp")
    return float(result.statistic), float(result.pvalue)


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    feature: str
    psi: float
    ks_statistic: float
    ks_pvalue: float
    drifted: bool


@dataclass(frozen=True, slots=True)
class DriftReport:
    features: tuple[FeatureDrift, ...]
    reference_rows: int
    current_rows: int

    @property
    def drifted(self) -> tuple[str, ...]:
        return tuple(f.feature for f in self.features if f.drifted)

    @property
    def max_psi(self) -> float:
        return max((f.psi for f in self.features), default=0.0)


def input_drift(
    reference: FloatArray,
    current: FloatArray,
    names: Sequence[str],
    *,
    psi_threshold: float,
    ks_alpha: float,
) -> DriftReport:
    """PSI and KS of every feature column of `current` against `reference` (rows x features)."""
    if reference.ndim != 2 or current.ndim != 2:
        raise ValueError("reference and current must be 2-D (rows x features)")
    if reference.shape[1] != len(names) or current.shape[1] != len(names):
        raise ValueError(
            f"expected {len(names)} feature columns, got {reference.shape[1]} (reference) "
            f"and {current.shape[1]} (current)"
        )
    rows = []
    for i, name in enumerate(names):
        value = psi(reference[:, i], current[:, i])
        statistic, pvalue = ks_pvalue(reference[:, i], current[:, i])
        rows.append(
            FeatureDrift(
                name, value, statistic, pvalue, value > psi_threshold and pvalue < ks_alpha
            )
        )
    return DriftReport(tuple(rows), reference.shape[0], current.shape[0])


@dataclass(slots=True)
class Score:
    """Live score of one model version: each prediction's P(up) against the realized move."""

    n: int = 0
    hits: int = 0
    brier_sum: float = 0.0
    bin_count: list[int] = field(default_factory=lambda: [0] * CALIBRATION_BINS)
    bin_p: list[float] = field(default_factory=lambda: [0.0] * CALIBRATION_BINS)
    bin_y: list[int] = field(default_factory=lambda: [0] * CALIBRATION_BINS)

    def add(self, p_up: float, up: bool) -> bool:
        """Record one realized prediction; returns whether its direction was right."""
        if not 0.0 <= p_up <= 1.0:
            raise ValueError(f"p_up must be a probability, got {p_up}")
        y = 1 if up else 0
        hit = (p_up >= 0.5) == up
        self.n += 1
        self.hits += hit
        self.brier_sum += (p_up - y) ** 2
        b = min(int(p_up * CALIBRATION_BINS), CALIBRATION_BINS - 1)
        self.bin_count[b] += 1
        self.bin_p[b] += p_up
        self.bin_y[b] += y
        return hit

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.n if self.n else None

    @property
    def brier(self) -> float | None:
        return self.brier_sum / self.n if self.n else None

    @property
    def calibration_error(self) -> float | None:
        """Expected calibration error: the count-weighted gap between mean P(up) and the
        observed frequency of up, over ten probability bins."""
        if not self.n:
            return None
        gap = sum(
            abs(p - y) for c, p, y in zip(self.bin_count, self.bin_p, self.bin_y, strict=True) if c
        )
        return gap / self.n

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "n": self.n,
            "hit_rate": self.hit_rate,
            "brier": self.brier,
            "calibration_error": self.calibration_error,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    promote: bool
    reason: str


def promotion_verdict(
    champion: Score, challenger: Score, *, min_predictions: int, margin: float
) -> Verdict:
    """Promote when the challenger, over at least `min_predictions` shadow predictions scored on
    the same ticks as the champion, has a Brier score lower by at least `margin`."""
    if challenger.n < min_predictions or champion.n < min_predictions:
        return Verdict(False, f"{challenger.n} of {min_predictions} shadow predictions scored")
    assert champion.brier is not None and challenger.brier is not None
    gain = champion.brier - challenger.brier
    if gain >= margin:
        return Verdict(
            True,
            f"challenger Brier {challenger.brier:.4f} beats champion {champion.brier:.4f} "
            f"by {gain:.4f} >= {margin} over {challenger.n} predictions",
        )
    return Verdict(
        False,
        f"challenger Brier {challenger.brier:.4f} vs champion {champion.brier:.4f}: "
        f"gain {gain:.4f} < margin {margin}",
    )


class ConceptDetector:
    """river's ADWIN on a 0/1 error stream (1: the prediction was wrong), typed for clm."""

    def __init__(self, delta: float) -> None:
        from river.drift import ADWIN

        self.delta = delta
        self._adwin = ADWIN(delta=delta)  # type: ignore[no-untyped-call]

    def update(self, error: float) -> bool:
        """Add one observation; True when ADWIN detects a change of the error rate."""
        self._adwin.update(error)  # type: ignore[no-untyped-call]
        return bool(self._adwin.drift_detected)

    @property
    def estimation(self) -> float:
        """The error rate of ADWIN's current window."""
        return float(self._adwin.estimation)
