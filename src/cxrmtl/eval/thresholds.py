"""Operating points: thresholds chosen on the validation split, metrics at those thresholds, RUN/thresholds.json.

A threshold t calls a sample positive when its probability is >= t (scikit-learn's roc_curve convention). Thresholds
are chosen on validation data only and then applied unchanged to the evaluated split, so the reported sensitivity
and specificity are honest estimates. predict, triage and the service read them through ``load_thresholds``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cxrmtl import labels as L
from cxrmtl.errors import EvaluationError, RunError
from cxrmtl.fsio import write_json_atomic
from cxrmtl.runs.layout import THRESHOLDS_FILE

THRESHOLDS_SCHEMA = 1


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


@dataclass(frozen=True)
class Thresholds:
    """Per method, task and output name: the threshold (None = undefined on the validation split)."""

    methods: dict[str, dict[str, dict[str, float | None]]]
    default: str = "youden"
    split: str = "val"
    target_sensitivity: float = L.EVAL_TARGET_SENSITIVITY
    meta: dict[str, str] = field(default_factory=dict)
    data: dict[str, object] = field(default_factory=dict)  # what they were fitted on: root, fingerprint, split, kind

    def get(self, task: str, output: str, method: str | None = None) -> float | None:
        """Threshold of one output (e.g. ``get("findings", "Effusion")``); None when unknown or undefined."""
        return self.methods.get(method or self.default, {}).get(task, {}).get(output)

    def to_json(self) -> dict[str, object]:
        """The RUN/thresholds.json document (schema in docs/architecture.md)."""
        return {
            "schema": THRESHOLDS_SCHEMA,
            "split": self.split,
            "default": self.default,
            "target_sensitivity": self.target_sensitivity,
            **self.meta,
            **({"data": dict(self.data)} if self.data else {}),
            "methods": self.methods,
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


def save_thresholds(run: Path, thresholds: Thresholds, *, code_version: str,
                    data: Mapping[str, object] | None = None) -> Path:
    """Write RUN/thresholds.json atomically (temp file + fsync + rename), so a crash never leaves half a file.

    ``data`` records what they were fitted on (data root, index fingerprint, split, kind; cxrmtl.runs.data).
    """
    doc = thresholds.to_json()
    if data is not None:
        doc["data"] = dict(data)
    doc["code_version"] = code_version
    doc["created"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return write_json_atomic(Path(run) / THRESHOLDS_FILE, doc)


def _check_value(path: Path, where: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RunError(f"{path}: {where} must be a finite number or null, got {value!r}")
    return float(value)


def _parse_methods(path: Path, methods: object) -> dict[str, dict[str, dict[str, float | None]]]:
    if not isinstance(methods, dict) or not methods:
        raise RunError(f"{path}: 'methods' must be a non-empty object")
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for method, tasks in methods.items():
        if not isinstance(tasks, dict):
            raise RunError(f"{path}: methods.{method} must be an object of tasks")
        out[method] = {}
        for task, values in tasks.items():
            if not isinstance(values, dict):
                raise RunError(f"{path}: methods.{method}.{task} must be an object of outputs")
            out[method][task] = {k: _check_value(path, f"methods.{method}.{task}.{k}", v) for k, v in values.items()}
    return out


def load_thresholds(run: Path) -> Thresholds | None:
    """Read RUN/thresholds.json; None when the run has not been evaluated yet; RunError when the file is malformed."""
    path = Path(run) / THRESHOLDS_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("schema") != THRESHOLDS_SCHEMA:
        raise RunError(f"{path}: expected an object with schema {THRESHOLDS_SCHEMA}")
    methods = _parse_methods(path, doc.get("methods"))
    default = doc.get("default", "youden")
    if default not in methods:
        raise RunError(f"{path}: default method {default!r} is not among methods {sorted(methods)}")
    meta = {k: str(doc[k]) for k in ("code_version", "created") if k in doc}
    data = doc.get("data", {})
    if not isinstance(data, dict):
        raise RunError(f"{path}: 'data' must be an object (root, fingerprint, split, kind)")
    return Thresholds(
        data=data,
        methods=methods,
        default=default,
        split=str(doc.get("split", "val")),
        target_sensitivity=float(doc.get("target_sensitivity", L.EVAL_TARGET_SENSITIVITY)),
        meta=meta,
    )
