"""eval.calibration: ECE definition, reliability bins, temperature scaling recovers a known temperature."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrmtl.errors import EvaluationError
from cxrmtl.eval.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability,
    to_logits,
)


def test_ece_of_a_hand_computed_case() -> None:
    # Two bins of width 0.5: [0.2, 0.4] -> mean 0.3, observed 0.5; [0.8] -> mean 0.8, observed 1.0.
    probs, labels = np.array([0.2, 0.4, 0.8]), np.array([0, 1, 1])
    expected = (2 / 3) * abs(0.5 - 0.3) + (1 / 3) * abs(1.0 - 0.8)
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(expected)


def test_perfectly_calibrated_sample_has_small_ece() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(int)
    assert expected_calibration_error(p, y) < 0.01


def test_reliability_bins_count_everything_and_include_one() -> None:
    rel = reliability(np.array([0.0, 0.5, 1.0, 1.0]), np.array([0, 1, 1, 0]), n_bins=4)
    assert rel.count.sum() == 4 and rel.count[-1] == 2 and rel.count[0] == 1
    assert np.isnan(rel.observed[1])  # empty bin


def test_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 40_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)  # labels follow sigmoid(z)
    overconfident = 1 / (1 + np.exp(-2.5 * z))  # logits scaled by 2.5
    temp = fit_temperature(overconfident, y)
    assert temp == pytest.approx(2.5, rel=0.05)
    scaled = apply_temperature(overconfident, temp)
    assert expected_calibration_error(scaled, y) < expected_calibration_error(overconfident, y) / 3
    assert roc_auc_score(y, scaled) == pytest.approx(roc_auc_score(y, overconfident))  # ranking unchanged


def test_temperature_undefined_without_both_classes() -> None:
    assert fit_temperature(np.array([0.2, 0.7]), np.array([1, 1])) is None
    assert np.allclose(apply_temperature(np.array([0.2, 0.7]), None), [0.2, 0.7])


def test_logits_are_finite_at_the_edges() -> None:
    assert np.isfinite(to_logits(np.array([0.0, 1.0]))).all()


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [(np.array([1.2]), np.array([1]), "within"), (np.array([0.2, 0.3]), np.array([1]), "labels"),
     (np.array([np.nan]), np.array([0]), "finite")],
)
def test_bad_inputs(probs: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        expected_calibration_error(probs, labels)


def test_bad_temperature_and_bins() -> None:
    with pytest.raises(EvaluationError, match="temperature"):
        apply_temperature(np.array([0.5]), -1.0)
    with pytest.raises(EvaluationError, match="n_bins"):
        reliability(np.array([0.5]), np.array([1]), n_bins=0)


def test_temperature_at_bound_is_reported() -> None:
    from cxrmtl.eval.calibration import at_bound

    # Labels independent of (extreme) scores: the best single temperature flattens everything -> the upper bound.
    rng = np.random.default_rng(2)
    probs = np.where(rng.random(2000) < 0.5, 0.999, 0.001)
    labels = (rng.random(2000) < 0.5).astype(int)
    temp = fit_temperature(probs, labels)
    assert at_bound(temp) and not at_bound(1.3) and not at_bound(None)
