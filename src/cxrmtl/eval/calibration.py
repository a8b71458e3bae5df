"""Calibration: expected calibration error, reliability curves and temperature scaling.

ECE follows Guo et al., ICML 2017 (equal-width confidence bins, |observed rate - mean probability| weighted by the
bin's share of samples), applied per finding as a binary problem. Temperature scaling divides each finding's logit
by one scalar T fitted on the validation split by minimising binary cross-entropy; it changes calibration but never
the ranking, so AUROC is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from cxrmtl import labels as L
from cxrmtl.errors import EvaluationError

# One definition of the temperature mapping for evaluation and inference (predict applies it too).
from cxrmtl.runs.operating import apply_temperature, to_logits

__all__ = ["Reliability", "apply_temperature", "at_bound", "expected_calibration_error", "fit_temperature",
           "reliability", "to_logits"]

# Search range of log T: T in [e^-4, e^4] ~ [0.018, 55] covers every temperature seen in practice (Guo et al. 2017
# report T between ~1 and ~3 for modern networks).
_LOG_T_BOUNDS = (-4.0, 4.0)


@dataclass(frozen=True)
class Reliability:
    """Per bin: mean predicted probability, observed positive rate, number of samples (empty bins have NaN rates)."""

    edges: np.ndarray  # (n_bins + 1,)
    confidence: np.ndarray  # (n_bins,)
    observed: np.ndarray  # (n_bins,)
    count: np.ndarray  # (n_bins,)


def _check(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.ravel(np.asarray(probs, dtype=np.float64))
    y = np.ravel(np.asarray(targets, dtype=np.float64))
    if p.shape != y.shape:
        raise EvaluationError(f"calibration: {p.size} probabilities but {y.size} labels")
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0):
        raise EvaluationError("calibration: probabilities must be finite and within [0, 1]")
    return p, y


def reliability(probs: np.ndarray, targets: np.ndarray, *, n_bins: int = L.EVAL_ECE_BINS) -> Reliability:
    """Equal-width reliability bins over [0, 1]; the last bin includes 1.0."""
    if n_bins < 1:
        raise EvaluationError(f"n_bins: must be at least 1, got {n_bins}")
    p, y = _check(probs, targets)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(idx, weights=p, minlength=n_bins) / count
        observed = np.bincount(idx, weights=y, minlength=n_bins) / count
    return Reliability(edges=edges, confidence=confidence, observed=observed, count=count)


def expected_calibration_error(
    probs: np.ndarray, targets: np.ndarray, *, n_bins: int = L.EVAL_ECE_BINS
) -> float | None:
    """ECE in [0, 1]; None when there are no samples."""
    rel = reliability(probs, targets, n_bins=n_bins)
    total = rel.count.sum()
    if total == 0:
        return None
    full = rel.count > 0
    return float(np.sum(rel.count[full] * np.abs(rel.observed[full] - rel.confidence[full])) / total)


def _bce(log_t: float, z: np.ndarray, y: np.ndarray) -> float:
    s = z / np.exp(log_t)
    # log(1 + e^s) - y s, computed stably.
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def at_bound(temperature: float | None) -> bool:
    """True when a fitted temperature sits at the search bound: scaling alone cannot calibrate these outputs (e.g.
    probabilities shifted by a pos_weight, or a model no better than chance on validation)."""
    if temperature is None:
        return False
    log_t = float(np.log(temperature))
    return min(abs(log_t - b) for b in _LOG_T_BOUNDS) < 1e-3


def fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float | None:
    """Temperature minimising BCE on (validation) data; None when a class is absent (nothing to calibrate)."""
    p, y = _check(probs, targets)
    if y.size == 0 or y.min() == y.max():
        return None
    z = to_logits(p)
    res = minimize_scalar(_bce, bounds=_LOG_T_BOUNDS, args=(z, y), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))
