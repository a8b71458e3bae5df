"""Paired, patient-level bootstrap of the AUROC difference between two models scored on the same images.

Both models are evaluated on the very same resamples: one ``PatientResampler`` draws patients with replacement
(all images of a drawn patient come along, so correlated follow-up images do not shrink the interval) and each
resample's AUROC of model A minus that of model B is one bootstrap draw of the difference. The pairing removes the
between-image variance the two models share, which is what makes a small difference detectable at all. The numeric
work is ``eval.bootstrap.bootstrap_metric`` run twice on one shared ``PatientResampler`` (no second AUROC here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxrmtl.errors import EvaluationError
from cxrmtl.eval.bootstrap import PatientResampler, bootstrap_metric


@dataclass(frozen=True)
class PairedResult:
    """Per output column: AUROC of A and B, their difference A - B with a percentile interval and a p-value.

    ``p_value`` is the two-sided bootstrap p-value of "no difference" (twice the smaller tail of the resampled
    differences around 0, at most 1). NaN where a column has no positives or no negatives.
    """

    names: tuple[str, ...]
    auroc_a: np.ndarray
    auroc_b: np.ndarray
    diff: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p_value: np.ndarray
    n_valid: np.ndarray
    level: float
    samples: np.ndarray  # (B, K) resampled differences A - B

    def rows(self) -> list[dict[str, object]]:
        """One JSON-ready dict per column (NaN -> None)."""

        def clean(value: float) -> float | None:
            return None if not np.isfinite(value) else float(value)

        return [
            {
                "name": name,
                "auroc_a": clean(self.auroc_a[k]),
                "auroc_b": clean(self.auroc_b[k]),
                "diff": clean(self.diff[k]),
                "low": clean(self.low[k]),
                "high": clean(self.high[k]),
                "p_value": clean(self.p_value[k]),
                "n_valid": int(self.n_valid[k]),
            }
            for k, name in enumerate(self.names)
        ]


def _as_2d(array: np.ndarray, *, field: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise EvaluationError(f"{field}: expected (N,) or (N, K), got shape {arr.shape}")
    return arr


def _check_inputs(
    scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, patient_ids: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    a = _as_2d(scores_a, field="scores_a").astype(np.float64)
    b = _as_2d(scores_b, field="scores_b").astype(np.float64)
    y = _as_2d(labels, field="labels")
    m = np.ones(y.shape, dtype=bool) if mask is None else _as_2d(mask, field="mask").astype(bool)
    pids = np.asarray(patient_ids)
    for field, arr in (("scores_a", a), ("scores_b", b), ("mask", m)):
        if arr.shape != y.shape:
            raise EvaluationError(f"{field}: shape {arr.shape} differs from labels {y.shape}")
    if pids.shape != (y.shape[0],):
        raise EvaluationError(f"patient_ids: shape {pids.shape}, expected ({y.shape[0]},)")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise EvaluationError("scores: NaN or infinite values among the model outputs")
    if y.size and not np.isin(y[m], (0, 1)).all():
        raise EvaluationError("labels: values must be 0 or 1 where the mask is True")
    return a, b, np.where(m, y, 0).astype(np.int8), m, pids


ScoreSet = np.ndarray | Sequence[np.ndarray]


def _seed_list(scores: ScoreSet, *, field: str) -> list[np.ndarray]:
    items = [scores] if isinstance(scores, np.ndarray) else list(scores)
    if not items:
        raise EvaluationError(f"{field}: no score arrays given")
    return items


def paired_auroc_difference(
    scores_a: ScoreSet,
    scores_b: ScoreSet,
    labels: np.ndarray,
    patient_ids: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedResult:
    """AUROC(A) - AUROC(B) per column with a paired patient-level percentile bootstrap interval.

    Rows of the scores, ``labels``, ``mask`` and ``patient_ids`` must describe the same images in the same order
    (``align_rows`` does that for two prediction sets). ``scores_a`` / ``scores_b`` may each be a list of arrays,
    one per training seed (seed k of A is paired with seed k of B): the estimate is then the mean over seeds of the
    per-seed differences, and every resample averages the per-seed differences on the same patient draw, so the
    interval covers the test-set sampling of the seed-averaged difference (seed spread is reported separately).
    """
    if not 0.0 < level < 1.0:
        raise EvaluationError(f"level: must lie in (0, 1), got {level}")
    if n_resamples < 1:
        raise EvaluationError(f"n_resamples: must be at least 1, got {n_resamples}")
    seeds_a, seeds_b = _seed_list(scores_a, field="scores_a"), _seed_list(scores_b, field="scores_b")
    if len(seeds_a) != len(seeds_b):
        raise EvaluationError(f"scores: {len(seeds_a)} seeds of A but {len(seeds_b)} of B; pair them one to one")
    resampler: PatientResampler | None = None
    diffs, points_a, points_b = [], [], []
    for a_k, b_k in zip(seeds_a, seeds_b, strict=True):
        a, b, y, m, pids = _check_inputs(a_k, b_k, labels, patient_ids, mask)
        resampler = resampler or PatientResampler(pids, n_resamples=n_resamples, seed=seed)
        res_a = bootstrap_metric(a, y, metric="auroc", mask=m, resampler=resampler, level=level)
        res_b = bootstrap_metric(b, y, metric="auroc", mask=m, resampler=resampler, level=level)
        diffs.append(res_a.samples - res_b.samples)
        points_a.append(res_a.point)
        points_b.append(res_b.point)
    names = tuple(names) if names is not None else tuple(str(k) for k in range(y.shape[1]))
    if len(names) != y.shape[1]:
        raise EvaluationError(f"names: {len(names)} names for {y.shape[1]} columns")
    return _summarise(
        np.mean(diffs, axis=0), names=names, point_a=np.mean(points_a, axis=0), point_b=np.mean(points_b, axis=0),
        level=level,
    )


def macro_difference(result: PairedResult) -> dict[str, float | None]:
    """The difference of the mean AUROC over the defined columns, with its interval from the same resamples."""
    defined = np.isfinite(result.diff)
    if not defined.any():
        return {"diff": None, "low": None, "high": None, "p_value": None}
    per_draw = result.samples[:, defined].mean(axis=1)
    per_draw = per_draw[np.isfinite(per_draw)]
    alpha = (1.0 - result.level) / 2.0
    low, high = np.quantile(per_draw, [alpha, 1.0 - alpha])
    p_value = min(1.0, 2.0 * min((per_draw <= 0).mean(), (per_draw >= 0).mean()))
    return {"diff": float(result.diff[defined].mean()), "low": float(low), "high": float(high), "p_value": p_value}


def _summarise(
    samples: np.ndarray, *, names: tuple[str, ...], point_a: np.ndarray, point_b: np.ndarray, level: float
) -> PairedResult:
    alpha = (1.0 - level) / 2.0
    valid = np.isfinite(samples)
    n_valid = valid.sum(axis=0)
    low, high, p_value = (np.full(samples.shape[1], np.nan) for _ in range(3))
    for k in np.flatnonzero(n_valid):
        column = samples[valid[:, k], k]
        low[k], high[k] = np.quantile(column, [alpha, 1.0 - alpha])
        p_value[k] = min(1.0, 2.0 * min((column <= 0).mean(), (column >= 0).mean()))
    return PairedResult(
        names=names,
        auroc_a=point_a,
        auroc_b=point_b,
        diff=point_a - point_b,
        low=low,
        high=high,
        p_value=p_value,
        n_valid=n_valid,
        level=level,
        samples=samples,
    )


def align_rows(rows_a: np.ndarray, rows_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (ia, ib) so that ``rows_a[ia] == rows_b[ib]``: the images both prediction sets scored, sorted."""
    rows_a, rows_b = np.asarray(rows_a), np.asarray(rows_b)
    for field, rows in (("rows_a", rows_a), ("rows_b", rows_b)):
        if len(np.unique(rows)) != len(rows):
            raise EvaluationError(f"{field}: an index row appears twice in one prediction set")
    common, ia, ib = np.intersect1d(rows_a, rows_b, assume_unique=True, return_indices=True)
    if common.size == 0:
        raise EvaluationError("rows: the two prediction sets share no image")
    return ia, ib
