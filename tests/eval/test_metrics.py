"""eval.metrics: exact AUROC/AP match scikit-learn (ties included); weighted versions match weighted sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrmtl.errors import EvaluationError
from cxrmtl.eval.metrics import (
    auroc,
    average_precision,
    mean_absolute_error,
    weighted_auroc,
    weighted_average_precision,
    weighted_metrics,
)


def _data(seed: int, n: int = 300, k: int = 4, decimals: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.3).astype(np.int8)
    s = np.round(rng.random((n, k)) + 0.3 * y, decimals)  # rounding creates many ties
    return s, y


def test_auroc_matches_sklearn_with_ties() -> None:
    s, y = _data(0)
    for k in range(s.shape[1]):
        assert auroc(s[:, k], y[:, k]) == pytest.approx(roc_auc_score(y[:, k], s[:, k]), abs=1e-12)
        assert average_precision(s[:, k], y[:, k]) == pytest.approx(average_precision_score(y[:, k], s[:, k]))


def test_single_class_is_undefined_not_a_number() -> None:
    s = np.array([0.1, 0.5, 0.9])
    assert auroc(s, np.zeros(3)) is None
    assert auroc(s, np.ones(3)) is None
    assert average_precision(s, np.zeros(3)) is None
    out = weighted_metrics(s, np.zeros(3), np.ones((2, 3)))
    assert np.isnan(out["auroc"]).all() and np.isnan(out["auprc"]).all()


def test_unit_weights_equal_exact_metrics() -> None:
    s, y = _data(1)
    w = np.ones((1, s.shape[0]))
    expected_auc = [roc_auc_score(y[:, k], s[:, k]) for k in range(s.shape[1])]
    expected_ap = [average_precision_score(y[:, k], s[:, k]) for k in range(s.shape[1])]
    np.testing.assert_allclose(weighted_auroc(s, y, w)[0], expected_auc, atol=1e-12)
    np.testing.assert_allclose(weighted_average_precision(s, y, w)[0], expected_ap, atol=1e-12)


def test_integer_weights_equal_sklearn_sample_weight() -> None:
    s, y = _data(2)
    rng = np.random.default_rng(3)
    w = rng.integers(0, 4, size=(5, s.shape[0])).astype(float)
    got_auc, got_ap = weighted_auroc(s, y, w), weighted_average_precision(s, y, w)
    for b in range(w.shape[0]):
        for k in range(s.shape[1]):
            assert got_auc[b, k] == pytest.approx(roc_auc_score(y[:, k], s[:, k], sample_weight=w[b]), abs=1e-12)
            assert got_ap[b, k] == pytest.approx(average_precision_score(y[:, k], s[:, k], sample_weight=w[b]))


def test_group_weights_equal_expanded_sample_weights() -> None:
    s, y = _data(4, n=120, k=2)
    groups = np.repeat(np.arange(40), 3)
    gw = np.random.default_rng(5).integers(0, 3, size=(3, 40)).astype(float)
    np.testing.assert_allclose(
        weighted_auroc(s, y, gw, groups=groups), weighted_auroc(s, y, gw[:, groups]), atol=1e-12
    )


def test_mask_drops_samples() -> None:
    s, y = _data(6, n=200, k=1)
    mask = np.random.default_rng(7).random((200, 1)) < 0.6
    got = weighted_auroc(s, y, np.ones((1, 200)), mask=mask)[0, 0]
    assert got == pytest.approx(roc_auc_score(y[mask[:, 0], 0], s[mask[:, 0], 0]))


@settings(max_examples=40, deadline=None)
@given(
    scores=st.lists(st.integers(0, 5), min_size=2, max_size=30),
    labels=st.lists(st.integers(0, 1), min_size=2, max_size=30),
    weights=st.lists(st.integers(0, 3), min_size=2, max_size=30),
)
def test_weighted_auroc_property(scores: list[int], labels: list[int], weights: list[int]) -> None:
    n = min(len(scores), len(labels), len(weights))
    s, y, w = np.array(scores[:n], float), np.array(labels[:n]), np.array(weights[:n], float)
    got = weighted_auroc(s, y, w[None, :])[0, 0]
    if w[y == 1].sum() == 0 or w[y == 0].sum() == 0:
        assert np.isnan(got)
    else:
        assert got == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        (np.array([0.1, np.nan]), np.array([0, 1]), "NaN"),
        (np.array([0.1, 0.2]), np.array([0, 2]), "0 or 1"),
        (np.array([0.1, 0.2, 0.3]), np.array([0, 1]), "shape"),
    ],
)
def test_bad_inputs_raise(scores: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        auroc(scores, labels)


def test_bad_groups_and_metric_names() -> None:
    s, y = _data(8, n=10, k=1)
    with pytest.raises(EvaluationError, match="groups"):
        weighted_auroc(s, y, np.ones((1, 3)), groups=np.arange(10))
    with pytest.raises(EvaluationError, match="unknown"):
        weighted_metrics(s, y, np.ones((1, 10)), metrics=("accuracy",))


def test_mean_absolute_error_respects_mask() -> None:
    pred, target = np.array([10.0, 20.0, 30.0]), np.array([12.0, 20.0, 0.0])
    assert mean_absolute_error(pred, target, np.array([True, True, False])) == pytest.approx(1.0)
    assert mean_absolute_error(pred, target, np.zeros(3, bool)) is None
