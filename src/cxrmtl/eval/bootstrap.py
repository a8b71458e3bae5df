"""Patient-clustered bootstrap confidence intervals, vectorised over all resamples.

Images of one patient are correlated (follow-up studies), so resampling images would understate the spread. Each
resample draws patients with replacement (a multinomial over patients); every image of a drawn patient enters with
the patient's multiplicity as its weight. The weighted metrics in cxrmtl.eval.metrics then evaluate all resamples
at once from a sparse (scores x patients) matrix times the (patients x resamples) count matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrmtl.errors import EvaluationError
from cxrmtl.eval.metrics import POINT_METRICS, weighted_metrics

# Keep each (score groups x resamples) float64 block near 64 MB: chunk = _CHUNK_ELEMENTS // N resamples.
_CHUNK_ELEMENTS = 8_000_000


class PatientResampler:
    """Multinomial patient draws: counts (B, P); the same seed and patient set always give the same draws."""

    def __init__(self, patient_ids: np.ndarray, *, n_resamples: int = 1000, seed: int = 0) -> None:
        patient_ids = np.asarray(patient_ids)
        if patient_ids.ndim != 1 or patient_ids.size == 0:
            raise EvaluationError(f"patient_ids: need a non-empty 1-D array, got shape {patient_ids.shape}")
        if int(n_resamples) < 1:
            raise EvaluationError(f"n_resamples: must be at least 1, got {n_resamples}")
        self.patients, self.inverse = np.unique(patient_ids, return_inverse=True)
        n_pat = self.patients.size
        rng = np.random.default_rng(seed)
        self.counts = rng.multinomial(n_pat, np.full(n_pat, 1.0 / n_pat), size=int(n_resamples)).astype(np.int32)
        self.n_resamples = int(n_resamples)

    def __len__(self) -> int:
        return self.n_resamples

    def weights(self, start: int = 0, stop: int | None = None, *, rows: np.ndarray | None = None) -> np.ndarray:
        """Per-image weights (b, N) of resamples start..stop (optionally only the given rows); for small problems."""
        idx = self.inverse if rows is None else self.inverse[rows]
        return self.counts[start:stop][:, idx].astype(np.float32)


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimate and percentile interval per column; NaN where undefined (one class absent)."""

    metric: str
    point: np.ndarray  # (K,)
    low: np.ndarray  # (K,)
    high: np.ndarray  # (K,)
    n_valid: np.ndarray  # (K,) resamples in which the metric was defined
    samples: np.ndarray  # (B, K)
    level: float


def _columns(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    return array[:, None] if array.ndim == 1 else array


def _point(metric: str, scores: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    fn = POINT_METRICS[metric]
    out = [fn(scores[mask[:, k], k], labels[mask[:, k], k]) for k in range(scores.shape[1])]
    return np.array([np.nan if v is None else v for v in out], dtype=np.float64)


def _interval(samples: np.ndarray, point: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_valid = np.isfinite(samples).sum(axis=0)
    low, high = np.full(point.shape, np.nan), np.full(point.shape, np.nan)
    alpha = (1.0 - level) / 2.0
    for k in np.flatnonzero((n_valid > 0) & np.isfinite(point)):
        col = samples[np.isfinite(samples[:, k]), k]
        low[k], high[k] = np.quantile(col, [alpha, 1.0 - alpha])
    return low, high, n_valid


def bootstrap_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    patient_ids: np.ndarray | None = None,
    *,
    metrics: tuple[str, ...] = ("auroc", "auprc"),
    mask: np.ndarray | None = None,
    resampler: PatientResampler | None = None,
    rows: np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, BootstrapResult]:
    """Point estimates (scikit-learn) and patient-clustered percentile CIs of several metrics for every column.

    Pass ``resampler`` to reuse the same draws across calls (subgroups, paired comparisons); ``rows`` then selects
    the resampler's images that ``scores`` holds (default: all of them, in the resampler's order).
    """
    unknown = [m for m in metrics if m not in POINT_METRICS]
    if unknown:
        raise EvaluationError(f"metrics: unknown {unknown}; known: {', '.join(sorted(POINT_METRICS))}")
    if not 0.0 < level < 1.0:
        raise EvaluationError(f"level: must be between 0 and 1, got {level}")
    scores, labels = _columns(scores).astype(np.float64), _columns(labels)
    mask = np.ones(labels.shape, bool) if mask is None else _columns(mask).astype(bool)
    if resampler is None:
        if patient_ids is None:
            raise EvaluationError("bootstrap_metrics: give patient_ids or a resampler")
        resampler = PatientResampler(patient_ids, n_resamples=n_resamples, seed=seed)
    groups = resampler.inverse if rows is None else resampler.inverse[np.asarray(rows)]
    if groups.shape[0] != scores.shape[0]:
        raise EvaluationError(f"bootstrap_metrics: {scores.shape[0]} score rows but {groups.shape[0]} patient rows")
    chunk = max(1, _CHUNK_ELEMENTS // max(1, scores.shape[0]))
    parts = [
        weighted_metrics(scores, labels, resampler.counts[b : b + chunk], metrics=metrics, mask=mask, groups=groups)
        for b in range(0, len(resampler), chunk)
    ]
    results = {}
    for name in metrics:
        point = _point(name, scores, labels, mask)
        samples = np.concatenate([part[name] for part in parts], axis=0)
        low, high, n_valid = _interval(samples, point, level)
        results[name] = BootstrapResult(
            metric=name, point=point, low=low, high=high, n_valid=n_valid, samples=samples, level=level
        )
    return results


def bootstrap_metric(
    scores: np.ndarray, labels: np.ndarray, patient_ids: np.ndarray | None = None, *, metric: str = "auroc", **kwargs
) -> BootstrapResult:
    """One metric of bootstrap_metrics (same keyword arguments)."""
    return bootstrap_metrics(scores, labels, patient_ids, metrics=(metric,), **kwargs)[metric]


def bootstrap_mean(result: BootstrapResult) -> tuple[float | None, float | None, float | None, int]:
    """Mean over the columns defined at the point estimate, with its CI from the same resamples.

    Resamples in which one of those columns is undefined are dropped (their count is n_valid). Returns
    (point, low, high, n_valid); None values when no column is defined.
    """
    cols = np.flatnonzero(np.isfinite(result.point))
    if cols.size == 0:
        return None, None, None, 0
    means = result.samples[:, cols].mean(axis=1)
    means = means[np.isfinite(means)]
    point = float(result.point[cols].mean())
    if means.size == 0:
        return point, None, None, 0
    alpha = (1.0 - result.level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return point, float(low), float(high), int(means.size)
