"""eval.subgroups: subgroup membership, AUROC per subgroup equals sklearn on that subgroup, the flag rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrmtl.errors import EvaluationError
from cxrmtl.eval.bootstrap import PatientResampler, bootstrap_metric
from cxrmtl.eval.subgroups import is_flagged, subgroup_auroc


def _problem(seed: int = 0, patients: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """Two findings; finding 0 is near random for women (sex 1), good for men, so women must be flagged."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(patients), 2)
    sex = np.repeat(rng.integers(0, 2, patients), 2)
    age = np.repeat(rng.uniform(20, 90, patients), 2)
    view = rng.integers(0, 2, pid.size)
    y = (rng.random((pid.size, 2)) < 0.3).astype(np.int8)
    signal = np.where(sex == 1, 0.05, 2.0)
    s = np.stack([rng.normal(0, 1, pid.size) + signal * y[:, 0], rng.normal(0, 1, pid.size) + 1.5 * y[:, 1]], 1)
    return s, y, pid, pd.DataFrame({"sex": sex, "age": age, "view": view})


def test_rows_cover_each_attribute_and_match_sklearn() -> None:
    s, y, pid, meta = _problem()
    r = PatientResampler(pid, n_resamples=100, seed=0)
    overall = bootstrap_metric(s, y, resampler=r).point
    rows = subgroup_auroc(s, y, np.ones_like(y, bool), meta, names=("A", "B"), resampler=r, overall=overall)
    groups = {(row.attribute, row.group) for row in rows}
    assert {("sex", "M"), ("sex", "F"), ("view", "PA"), ("view", "AP"), ("age", "<40"), ("age", ">=80")} <= groups
    women = next(row for row in rows if row.group == "F" and row.finding == "A")
    sel = meta["sex"].to_numpy() == 1
    assert women.auroc == pytest.approx(roc_auc_score(y[sel, 0], s[sel, 0]))
    assert women.n == sel.sum() and women.n_pos == y[sel, 0].sum()
    assert women.flagged  # near-random subgroup: CI upper bound below the overall AUROC
    men = next(row for row in rows if row.group == "M" and row.finding == "A")
    assert not men.flagged
    assert not any(row.flagged for row in rows if row.finding == "B")  # no subgroup effect planted for B


def test_flag_rule() -> None:
    assert is_flagged(0.70, 0.75)
    assert not is_flagged(0.80, 0.75)
    assert not is_flagged(None, 0.75) and not is_flagged(0.7, None)


def test_missing_metadata_column_is_skipped_and_undefined_is_none() -> None:
    s, y, pid, meta = _problem(patients=50)
    y[:, 1] = 0
    r = PatientResampler(pid, n_resamples=20, seed=0)
    rows = subgroup_auroc(s, y, np.ones_like(y, bool), meta[["sex"]], names=("A", "B"), resampler=r,
                          overall=np.array([0.8, np.nan]))
    assert {row.attribute for row in rows} == {"sex"}
    b = [row for row in rows if row.finding == "B"]
    assert all(row.auroc is None and row.low is None and not row.flagged for row in b)


def test_metadata_length_mismatch() -> None:
    s, y, pid, meta = _problem(patients=20)
    r = PatientResampler(pid, n_resamples=5)
    with pytest.raises(EvaluationError, match="metadata"):
        subgroup_auroc(s, y, np.ones_like(y, bool), meta.iloc[:5], names=("A", "B"), resampler=r,
                       overall=np.zeros(2))
