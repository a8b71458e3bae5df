"""Ranking metrics (AUROC, average precision) exact and weighted, the latter vectorised for the bootstrap.

Reported point estimates come from scikit-learn so they match what everyone else computes. The weighted versions
give every sample a weight per resample (its multiplicity in a bootstrap draw) and evaluate all resamples at once:
for each column, the distinct positive scores u_0 < ... < u_m-1 define slots; a sparse (slots x patients) membership
matrix (positives per score, negatives tied with a positive score, negatives between consecutive positive scores)
times the dense (patients x resamples) count matrix gives every weight sum needed, and AUROC (ties count one half,
as in roc_auc_score) and average precision follow from cumulative sums over the slots. Memory is (positives x
resamples), time O(images x resamples) in a sparse product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from cxrmtl.errors import EvaluationError


def _check_binary(scores: np.ndarray, labels: np.ndarray, *, name: str) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise EvaluationError(f"{name}: scores shape {scores.shape} does not match labels shape {labels.shape}")
    if not np.all(np.isfinite(scores)):
        raise EvaluationError(f"{name}: scores contain NaN or infinite values")
    if labels.size and not np.all((labels == 0) | (labels == 1)):
        raise EvaluationError(f"{name}: labels must be 0 or 1")
    return scores, labels.astype(bool)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (scikit-learn's roc_auc_score); None when positives or negatives are absent."""
    from sklearn.metrics import roc_auc_score

    s, y = _check_binary(np.ravel(scores), np.ravel(labels), name="auroc")
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, s))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the precision-recall curve as scikit-learn's average_precision_score; None if a class is absent."""
    from sklearn.metrics import average_precision_score

    s, y = _check_binary(np.ravel(scores), np.ravel(labels), name="average_precision")
    if y.all() or not y.any():
        return None
    return float(average_precision_score(y, s))


@dataclass(frozen=True)
class _Sums:
    """Weight sums at the distinct positive scores u_0 < ... < u_{m-1}, each (m, B).

    pos: positive weight at u_j; tie: negative weight at exactly u_j; below: negative weight strictly below u_j;
    wpos / wneg: totals (B,). Only the m positive score groups are materialised (m <= #positives), which is what makes
    the bootstrap cheap: negatives are binned between consecutive positive scores by a sparse matrix product.
    """

    pos: np.ndarray
    tie: np.ndarray
    below: np.ndarray
    wpos: np.ndarray
    wneg: np.ndarray


def _weight_sums(scores: np.ndarray, labels: np.ndarray, weights_t: np.ndarray, groups: np.ndarray) -> _Sums:
    """Sparse (3m+1, P) membership matrix times dense (P, B) weights -> the _Sums of one column."""
    u, pos_gid = np.unique(scores[labels], return_inverse=True)
    m = u.size
    neg = scores[~labels]
    slot = np.searchsorted(u, neg, side="left")
    tied = (slot < m) & (u[np.minimum(slot, m - 1)] == neg) if m else np.zeros(neg.shape, bool)
    # rows 0..m-1: positives per group; m..2m-1: tied negatives; 2m..3m: negatives in the bin below u_slot.
    row = np.concatenate([pos_gid, np.where(tied, m + slot, 2 * m + slot)])
    col = np.concatenate([groups[labels], groups[~labels]])
    member = sparse.csr_matrix((np.ones(row.size), (row, col)), shape=(3 * m + 1, weights_t.shape[0]))
    sums = np.asarray(member @ weights_t)
    pos, tie, bins = sums[:m], sums[m : 2 * m], sums[2 * m :]
    below = np.cumsum(bins[:m], axis=0) + (np.cumsum(tie, axis=0) - tie)
    return _Sums(pos=pos, tie=tie, below=below, wpos=pos.sum(axis=0), wneg=tie.sum(axis=0) + bins.sum(axis=0))


def _defined(sums: _Sums, value: np.ndarray) -> np.ndarray:
    return np.where((sums.wpos > 0) & (sums.wneg > 0), value, np.nan)


def _auroc_from_sums(sums: _Sums) -> np.ndarray:
    num = (sums.pos * (sums.below + 0.5 * sums.tie)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _defined(sums, num / (sums.wpos * sums.wneg))


def _ap_from_sums(sums: _Sums) -> np.ndarray:
    tp = sums.wpos - (np.cumsum(sums.pos, axis=0) - sums.pos)  # positive weight scored at or above u_j
    fp = sums.wneg - sums.below  # negative weight scored at or above u_j
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        return _defined(sums, (sums.pos * precision).sum(axis=0) / sums.wpos)


# Registry of bootstrap-able metrics: name -> reduction of the per-column weight sums.
_FROM_SUMS: dict[str, Callable[[_Sums], np.ndarray]] = {"auroc": _auroc_from_sums, "auprc": _ap_from_sums}


def _prepare(
    scores: np.ndarray, labels: np.ndarray, weights: np.ndarray, mask: np.ndarray | None, groups: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    scores, y = _check_binary(scores, labels, name="weighted metric")
    if scores.ndim == 1:
        scores, y = scores[:, None], y[:, None]
    n = scores.shape[0]
    weights = np.asarray(weights)
    if weights.ndim == 1:
        weights = weights[None, :]
    groups = np.arange(n) if groups is None else np.asarray(groups, dtype=np.int64)
    if groups.shape != (n,):
        raise EvaluationError(f"weighted metric: groups must have shape ({n},), got {groups.shape}")
    if groups.size and (groups.min() < 0 or groups.max() >= weights.shape[1]):
        raise EvaluationError(f"weighted metric: groups index outside the {weights.shape[1]} weight columns")
    mask = np.ones_like(y) if mask is None else np.asarray(mask, dtype=bool).reshape(y.shape)
    return scores, y, weights, mask, groups


def weighted_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    *,
    metrics: tuple[str, ...] = ("auroc", "auprc"),
    mask: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Several ranking metrics of every column under every weight vector, sharing one pass: name -> (B, K)."""
    unknown = [m for m in metrics if m not in _FROM_SUMS]
    if unknown:
        raise EvaluationError(f"metrics: unknown {unknown}; known: {', '.join(sorted(_FROM_SUMS))}")
    scores, y, weights, mask, groups = _prepare(scores, labels, weights, mask, groups)
    weights_t = np.ascontiguousarray(weights.T, dtype=np.float64)
    out = {name: np.full((weights.shape[0], scores.shape[1]), np.nan) for name in metrics}
    for k in range(scores.shape[1]):
        keep = mask[:, k]
        if not y[keep, k].any() or y[keep, k].all():
            continue
        sums = _weight_sums(scores[keep, k], y[keep, k], weights_t, groups[keep])
        for name in metrics:
            out[name][:, k] = _FROM_SUMS[name](sums)
    return out


def weighted_auroc(
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """AUROC of every column under every weight vector: (N, K) scores, weights (B, N) -> (B, K), NaN if undefined.

    With ``groups`` (N,) the weights are (B, P) per group (patient) and sample i takes weights[:, groups[i]]. Unit
    weights reproduce roc_auc_score exactly, ties included.
    """
    return weighted_metrics(scores, labels, weights, metrics=("auroc",), mask=mask, groups=groups)["auroc"]


def weighted_average_precision(
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Average precision (scikit-learn's step-wise definition) under every weight vector; see weighted_auroc."""
    return weighted_metrics(scores, labels, weights, metrics=("auprc",), mask=mask, groups=groups)["auprc"]


# Exact point estimates of the bootstrap-able metrics (same keys as the weighted registry).
POINT_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float | None]] = {
    "auroc": auroc,
    "auprc": average_precision,
}


def mean_absolute_error(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """MAE over the unmasked samples (used for age in years); None when no sample is labelled."""
    pred, target = np.ravel(np.asarray(pred, dtype=np.float64)), np.ravel(np.asarray(target, dtype=np.float64))
    keep = np.ones(pred.shape, bool) if mask is None else np.ravel(np.asarray(mask, dtype=bool))
    keep &= np.isfinite(target) & np.isfinite(pred)
    return float(np.abs(pred[keep] - target[keep]).mean()) if keep.any() else None
