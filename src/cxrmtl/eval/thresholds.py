"""Operating points: thresholds chosen on the validation split, metrics at those thresholds, RUN/thresholds.json.

A threshold t calls a sample positive when its probability is >= t (scikit-learn's roc_curve convention). Thresholds
are chosen on validation data only and then applied unchanged to the evaluated split, so the reported sensitivity
and specificity are honest estimates. RUN/thresholds.json is written and read by ``cxrmtl.runs.operating`` (one
reader for evaluation, predict, triage and the service); its names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from cxrmtl import labels as L
from cxrmtl.errors import EvaluationError

# The file's one reader and writer live below infer and eval (predict reads it too); re-exported here.
from cxrmtl.runs.operating import THRESHOLDS_FILE, THRESHOLDS_SCHEMA, Thresholds, load_thresholds, save_thresholds

__all__ = [
    "THRESHOLDS_FILE", "THRESHOLDS_SCHEMA", "THRESHOLD_METHODS", "Thresholds", "choose_thresholds",
    "load_thresholds", "operating_metrics", "save_thresholds", "sensitivity_threshold", "youden_threshold",
]


def _roc(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    from sklearn.metrics import roc_curve

    y = np.asarray(targets).astype(bool)
    if y.all() or not y.any():
        return None
    fpr, tpr, thr = roc_curve(y, np.asarray(scores, dtype=np.float64), drop_intermediate=False)
    # roc_curve's first threshold is +inf (nothing positive); keep it finite and JSON-safe, still above every score.
    thr = thr.copy()
    thr[0] = np.nextafter(thr[1], np.inf)
    return fpr, tpr, thr


def youden_threshold(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Threshold maximising Youden's J = sensitivity + specificity - 1; None when a class is absent."""
    roc = _roc(scores, targets)
    if roc is None:
        return None
    fpr, tpr, thr = roc
    return float(thr[int(np.argmax(tpr - fpr))])


def sensitivity_threshold(
    scores: np.ndarray, targets: np.ndarray, *, target: float = L.EVAL_TARGET_SENSITIVITY
) -> float | None:
    """Highest threshold whose sensitivity reaches ``target`` (most specific such point); None if a class is absent."""
    if not 0.0 < target <= 1.0:
        raise EvaluationError(f"target_sensitivity: must be in (0, 1], got {target}")
    roc = _roc(scores, targets)
    if roc is None:
        return None
    _, tpr, thr = roc
    return float(thr[int(np.argmax(tpr >= target - 1e-12))])


# Registry of operating-point rules: name -> (scores, targets, target_sensitivity) -> threshold.
THRESHOLD_METHODS: dict[str, Callable[[np.ndarray, np.ndarray, float], float | None]] = {
    "youden": lambda s, y, _t: youden_threshold(s, y),
    "sensitivity": lambda s, y, t: sensitivity_threshold(s, y, target=t),
}


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def operating_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float | None) -> dict[str, float | None]:
    """Sensitivity, specificity, PPV, NPV and F1 at a threshold (None where a ratio has no denominator)."""
    keys = ("sensitivity", "specificity", "ppv", "npv", "f1")
    if threshold is None:
        return dict.fromkeys(keys)
    y = np.asarray(targets).astype(bool)
    pred = np.asarray(scores, dtype=np.float64) >= threshold
    tp, fp = float(np.sum(pred & y)), float(np.sum(pred & ~y))
    fn, tn = float(np.sum(~pred & y)), float(np.sum(~pred & ~y))
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def choose_thresholds(
    outputs: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]],
    *,
    target_sensitivity: float = L.EVAL_TARGET_SENSITIVITY,
    split: str = "val",
) -> Thresholds:
    """Thresholds for every binary output: outputs maps task -> (scores (N, K), targets (N, K), mask, names)."""
    methods: dict[str, dict[str, dict[str, float | None]]] = {name: {} for name in THRESHOLD_METHODS}
    for task, (scores, targets, mask, names) in outputs.items():
        for method, rule in THRESHOLD_METHODS.items():
            methods[method][task] = {
                out: rule(scores[mask[:, k], k], targets[mask[:, k], k], target_sensitivity)
                for k, out in enumerate(names)
            }
    return Thresholds(methods=methods, split=split, target_sensitivity=target_sensitivity)
