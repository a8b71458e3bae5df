"""Paired patient-level bootstrap of AUROC differences, checked against explicit resampling with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrmtl.ablate.paired import align_rows, macro_difference, paired_auroc_difference
from cxrmtl.errors import EvaluationError
from cxrmtl.eval.bootstrap import PatientResampler


def _data(n: int = 120, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=(n, 2))
    patients = np.repeat(np.arange(n // 3), 3)  # three images per patient
    good = labels + rng.normal(0, 0.6, size=(n, 2))  # informative model
    weak = labels + rng.normal(0, 2.0, size=(n, 2))  # weaker model
    return labels, patients, good, weak


def test_identical_models_differ_by_exactly_zero() -> None:
    labels, patients, good, _ = _data()
    result = paired_auroc_difference(good, good.copy(), labels, patients, n_resamples=50, names=["a", "b"])
    assert np.all(result.diff == 0) and np.all(result.samples == 0)
    assert result.low.tolist() == [0, 0] and result.high.tolist() == [0, 0]
    assert result.p_value.tolist() == [1.0, 1.0]
    assert [row["name"] for row in result.rows()] == ["a", "b"]


def test_paired_samples_match_explicit_patient_resampling() -> None:
    labels, patients, good, weak = _data()
    result = paired_auroc_difference(good, weak, labels, patients, n_resamples=20, seed=3)
    point = roc_auc_score(labels[:, 0], good[:, 0]) - roc_auc_score(labels[:, 0], weak[:, 0])
    assert result.diff[0] == pytest.approx(point)
    draws = PatientResampler(patients, n_resamples=20, seed=3)
    for b in range(5):
        weights = draws.weights(b, b + 1)[0]
        idx = np.repeat(np.arange(len(patients)), weights.astype(int))  # every image of a drawn patient, k times
        for k in range(2):
            expected = roc_auc_score(labels[idx, k], good[idx, k]) - roc_auc_score(labels[idx, k], weak[idx, k])
            assert result.samples[b, k] == pytest.approx(expected)


def test_clear_difference_excludes_zero() -> None:
    labels, patients, good, weak = _data(n=300)
    result = paired_auroc_difference(good, weak, labels, patients, n_resamples=200)
    assert np.all(result.low > 0) and np.all(result.diff > 0)
    assert np.all(result.p_value < 0.05)
    assert np.all(result.n_valid == 200)


def test_masked_column_without_negatives_is_nan_not_a_number() -> None:
    labels, patients, good, weak = _data()
    mask = np.ones_like(labels, dtype=bool)
    mask[:, 1] = labels[:, 1] == 1  # only positives remain in column 1
    result = paired_auroc_difference(good, weak, labels, patients, mask=mask, n_resamples=10)
    assert np.isnan(result.diff[1]) and np.isnan(result.low[1]) and result.n_valid[1] == 0
    assert result.rows()[1]["diff"] is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores_b": np.zeros((5, 2))}, "scores_b"),
        ({"patient_ids": np.arange(4)}, "patient_ids"),
        ({"scores_a": np.full((120, 2), np.nan)}, "NaN"),
        ({"labels": np.full((120, 2), 2)}, "0 or 1"),
        ({"level": 1.5}, "level"),
        ({"names": ["x"]}, "names"),
    ],
)
def test_bad_inputs_raise(kwargs: dict, message: str) -> None:
    labels, patients, good, weak = _data()
    args = {"scores_a": good, "scores_b": weak, "labels": labels, "patient_ids": patients} | kwargs
    extra = {k: args.pop(k) for k in ("level", "names") if k in args}
    with pytest.raises(EvaluationError, match=message):
        paired_auroc_difference(
            args["scores_a"], args["scores_b"], args["labels"], args["patient_ids"], n_resamples=5, **extra
        )


def test_align_rows() -> None:
    ia, ib = align_rows(np.array([5, 3, 9, 1]), np.array([1, 9, 7]))
    assert ia.tolist() == [3, 2] and ib.tolist() == [0, 1]
    with pytest.raises(EvaluationError, match="share no image"):
        align_rows(np.array([1]), np.array([2]))
    with pytest.raises(EvaluationError, match="twice"):
        align_rows(np.array([1, 1]), np.array([1]))


def test_seed_lists_average_per_seed_differences_on_the_same_draws() -> None:
    labels, patients, good, weak = _data(n=150)
    rng = np.random.default_rng(9)
    good2, weak2 = good + rng.normal(0, 0.3, good.shape), weak + rng.normal(0, 0.3, weak.shape)
    both = paired_auroc_difference([good, good2], [weak, weak2], labels, patients, n_resamples=40, seed=2)
    one = paired_auroc_difference(good, weak, labels, patients, n_resamples=40, seed=2)
    two = paired_auroc_difference(good2, weak2, labels, patients, n_resamples=40, seed=2)
    assert np.allclose(both.diff, (one.diff + two.diff) / 2)
    assert np.allclose(both.auroc_a, (one.auroc_a + two.auroc_a) / 2)
    assert np.allclose(both.samples, (one.samples + two.samples) / 2)
    with pytest.raises(EvaluationError, match="seeds"):
        paired_auroc_difference([good, good2], [weak], labels, patients, n_resamples=5)


def test_macro_difference_uses_the_same_resamples() -> None:
    labels, patients, good, weak = _data(n=300)
    result = paired_auroc_difference(good, weak, labels, patients, n_resamples=100)
    macro = macro_difference(result)
    assert macro["diff"] == pytest.approx(result.diff.mean())
    per_draw = result.samples.mean(axis=1)
    assert macro["low"] == pytest.approx(np.quantile(per_draw, 0.025))
    assert macro["low"] > 0 and macro["p_value"] < 0.05
    mask = np.zeros_like(labels, dtype=bool)
    mask[:, 0] = True
    mask[labels[:, 0] == 0, 0] = False  # column 0: positives only; column 1: nothing -> all undefined
    empty = paired_auroc_difference(good, weak, labels, patients, mask=mask, n_resamples=5)
    assert macro_difference(empty) == {"diff": None, "low": None, "high": None, "p_value": None}
