"""eval.bootstrap: patient-clustered draws, reproducibility, CIs that agree with a naive resampling loop."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrmtl.errors import EvaluationError
from cxrmtl.eval.bootstrap import PatientResampler, bootstrap_mean, bootstrap_metric, bootstrap_metrics


def _problem(seed: int = 0, patients: int = 60, k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(patients) * 7 + 100, rng.integers(1, 5, patients))
    y = (rng.random((pid.size, k)) < 0.3).astype(np.int8)
    s = rng.random((pid.size, k)) + 0.5 * y
    return s, y, pid


def test_resampler_draws_whole_patients() -> None:
    _, _, pid = _problem()
    r = PatientResampler(pid, n_resamples=50, seed=1)
    assert r.counts.shape == (50, np.unique(pid).size)
    assert (r.counts.sum(axis=1) == np.unique(pid).size).all()  # P patients drawn per resample
    w = r.weights(0, 50)
    for p in np.unique(pid)[:5]:  # all images of a patient share its multiplicity
        assert (w[:, pid == p] == w[:, pid == p][:, :1]).all()


def test_same_seed_same_draws_different_seed_different() -> None:
    _, _, pid = _problem()
    a, b, c = (PatientResampler(pid, n_resamples=20, seed=s) for s in (3, 3, 4))
    assert np.array_equal(a.counts, b.counts)
    assert not np.array_equal(a.counts, c.counts)


def test_samples_equal_naive_loop() -> None:
    s, y, pid = _problem(k=2)
    r = PatientResampler(pid, n_resamples=30, seed=0)
    res = bootstrap_metric(s, y, metric="auroc", resampler=r)
    w = r.weights(0, 30)
    for b in range(30):
        for k in range(2):
            expected = roc_auc_score(y[:, k], s[:, k], sample_weight=w[b])
            assert res.samples[b, k] == pytest.approx(expected, abs=1e-12)
    assert res.point[0] == pytest.approx(roc_auc_score(y[:, 0], s[:, 0]))
    assert (res.low <= res.point).all() and (res.point <= res.high).all()
    assert (res.n_valid == 30).all()


def test_ci_narrows_with_more_data_and_covers_point() -> None:
    small = bootstrap_metric(*_problem(1, patients=40), n_resamples=200)
    large = bootstrap_metric(*_problem(1, patients=800), n_resamples=200)
    assert np.all(large.high - large.low < small.high - small.low)


def test_undefined_column_gives_nan_interval() -> None:
    s, y, pid = _problem(k=2)
    y[:, 1] = 0
    res = bootstrap_metrics(s, y, pid, n_resamples=20)
    assert np.isnan(res["auroc"].point[1]) and np.isnan(res["auroc"].low[1]) and res["auroc"].n_valid[1] == 0
    point, low, high, n_valid = bootstrap_mean(res["auroc"])
    assert point == pytest.approx(res["auroc"].point[0]) and low <= point <= high and n_valid == 20


def test_rare_positive_resamples_are_dropped_not_invented() -> None:
    s, y, pid = _problem(k=1)
    y[:] = 0
    y[0, 0] = 1  # one positive image: many resamples miss its patient
    res = bootstrap_metric(s, y, pid, n_resamples=200)
    assert 0 < res.n_valid[0] < 200
    assert np.isfinite(res.low[0])


def test_rows_select_a_subset_of_the_resampler() -> None:
    s, y, pid = _problem()
    r = PatientResampler(pid, n_resamples=10, seed=0)
    rows = np.flatnonzero(np.arange(len(pid)) % 2 == 0)
    sub = bootstrap_metric(s[rows], y[rows], resampler=r, rows=rows)
    w = r.weights(0, 10, rows=rows)
    assert sub.samples[3, 0] == pytest.approx(roc_auc_score(y[rows, 0], s[rows, 0], sample_weight=w[3]))


def test_errors_name_the_field() -> None:
    s, y, pid = _problem()
    with pytest.raises(EvaluationError, match="n_resamples"):
        PatientResampler(pid, n_resamples=0)
    with pytest.raises(EvaluationError, match="patient_ids"):
        PatientResampler(np.array([]))
    with pytest.raises(EvaluationError, match="level"):
        bootstrap_metric(s, y, pid, level=1.5)
    with pytest.raises(EvaluationError, match="unknown"):
        bootstrap_metrics(s, y, pid, metrics=("f1",))
    with pytest.raises(EvaluationError, match="rows"):
        bootstrap_metric(s[:5], y[:5], pid)
    with pytest.raises(EvaluationError, match="patient_ids or a resampler"):
        bootstrap_metric(s, y)
