"""clm's statistics: PSI, KS, ADWIN on a correctness stream, live scoring, the promotion rule."""

from __future__ import annotations

import numpy as np
import pytest

from microservices.clm.drift import (
    ConceptDetector,
    Score,
    input_drift,
    ks_pvalue,
    promotion_verdict,
    psi,
)


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, 5_000)
    same = psi(reference, rng.normal(0, 1, 2_000))
    shifted = psi(reference, rng.normal(0.3, 1.2, 2_000))
    assert same < 0.02
    assert shifted > 0.1
    assert psi(reference, reference) == pytest.approx(0.0, abs=1e-12)


def test_psi_matches_its_definition_on_hand_made_bins() -> None:
    reference = np.arange(100, dtype=np.float64)  # deciles 0-9, 10-19, ...
    current = np.concatenate([np.full(50, 5.0), np.full(50, 95.0)])  # half in the first, half last
    r, c = np.full(10, 0.1), np.array([0.5] + [1e-4] * 8 + [0.5])
    expected = float(np.sum((c - r) * np.log(c / r)))
    assert psi(reference, current) == pytest.approx(expected)


def test_psi_and_drift_refuse_bad_shapes_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 10 reference values"):
        psi(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="expected 2 feature columns"):
        input_drift(
            np.zeros((50, 3)), np.zeros((50, 3)), ["a", "b"], psi_threshold=0.25, ks_alpha=0.01
        )


def test_ks_separates_same_from_shifted() -> None:
    rng = np.random.default_rng(2)
    reference = rng.normal(0, 1, 5_000)
    _, same = ks_pvalue(reference, rng.normal(0, 1, 1_000))
    _, shifted = ks_pvalue(reference, rng.normal(0.3, 1.0, 1_000))
    assert same > 0.01
    assert shifted < 1e-6


def test_a_feature_drifts_only_when_psi_and_ks_both_say_so() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(0, 1, (3_000, 2))
    current = np.column_stack([rng.normal(0, 1, 1_000), rng.normal(1.0, 1, 1_000)])
    report = input_drift(reference, current, ["calm", "moved"], psi_threshold=0.25, ks_alpha=0.001)
    assert report.drifted == ("moved",)
    assert report.max_psi > 0.25
    strict = input_drift(reference, current, ["calm", "moved"], psi_threshold=50, ks_alpha=0.001)
    assert strict.drifted == ()


def test_adwin_sees_the_correctness_stream_drop_and_not_before() -> None:
    rng = np.random.default_rng(4)
    correct = np.concatenate([rng.random(5_000) < 0.60, rng.random(3_000) < 0.40])
    adwin, alarms = ConceptDetector(0.002), []
    for t, ok in enumerate(correct):
        if adwin.update(0.0 if ok else 1.0):
            alarms.append(t)
    assert alarms, "ADWIN never fired"
    assert alarms[0] >= 5_000, f"false alarm at {alarms[0]}"
    assert alarms[0] < 5_600


def test_score_hit_rate_brier_and_calibration() -> None:
    score = Score()
    assert score.as_dict() == {"n": 0, "hit_rate": None, "brier": None, "calibration_error": None}
    assert score.add(0.8, True) is True
    assert score.add(0.8, False) is False
    assert score.add(0.3, False) is True
    assert score.add(0.3, False) is True
    assert score.n == 4 and score.hit_rate == 0.75
    assert score.brier == pytest.approx((0.04 + 0.64 + 0.09 + 0.09) / 4)
    # Bin 0.8: mean p 0.8, observed 0.5 (2 rows); bin 0.3: mean p 0.3, observed 0 (2 rows).
    assert score.calibration_error == pytest.approx((2 * 0.3 + 2 * 0.3) / 4)
    with pytest.raises(ValueError, match="probability"):
        score.add(1.5, True)


def scored(p: float, outcomes: list[bool]) -> Score:
    score = Score()
    for up in outcomes:
        score.add(p, up)
    return score


def test_promotion_needs_enough_predictions_and_the_margin() -> None:
    outcomes = [True] * 70 + [False] * 30
    champion, challenger = scored(0.5, outcomes), scored(0.7, outcomes)
    assert challenger.brier is not None and champion.brier is not None
    assert champion.brier - challenger.brier == pytest.approx(0.04)

    verdict = promotion_verdict(champion, challenger, min_predictions=100, margin=0.01)
    assert verdict.promote and "beats" in verdict.reason
    too_few = promotion_verdict(champion, challenger, min_predictions=101, margin=0.01)
    assert not too_few.promote and "100 of 101" in too_few.reason
    narrow = promotion_verdict(champion, challenger, min_predictions=100, margin=0.05)
    assert not narrow.promote and "< margin" in narrow.reason
    worse = promotion_verdict(challenger, champion, min_predictions=100, margin=0.0)
    assert not worse.promote
