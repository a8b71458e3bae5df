"""A run's operating file RUN/thresholds.json: thresholds and temperatures chosen on validation, one reader.

``cxrmtl evaluate`` chooses the thresholds (``eval.thresholds.choose_thresholds``) and fits one temperature per
classification output (``eval.calibration.fit_temperature``) on the validation split, then writes both here with
``save_thresholds``. Everything that uses a run later (evaluation reports, predict, triage, the service) reads the
file through ``load_thresholds`` only. This module sits below ``infer`` and ``eval`` so both can use it.

A threshold t calls a sample positive when its probability is >= t (scikit-learn's roc_curve convention); it was
chosen on the model's *uncalibrated* validation probabilities. Temperature scaling (Guo et al., ICML 2017) maps a
probability p to sigmoid(logit(p) / T); it is monotone, so ``calibrated_threshold`` maps a threshold through the
same T and the positive/negative call is unchanged by calibration.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cxrmtl import labels as L
from cxrmtl.errors import EvaluationError, RunError
from cxrmtl.fsio import read_json_file, write_json_atomic

THRESHOLDS_FILE = "thresholds.json"
THRESHOLDS_SCHEMA = 1
# Probabilities are clipped to [EPS, 1 - EPS] before taking logits so p = 0 or 1 stays finite (float32 resolution).
_EPS = 1e-7


@dataclass(frozen=True)
class Thresholds:
    """Per method, task and output name: the threshold (None = undefined on the validation split).

    ``temperatures`` maps task -> output -> the temperature to apply at inference (None = leave uncalibrated: none
    could be fitted, or the fit sat at its search bound); empty when the evaluation wrote none.
    """

    methods: dict[str, dict[str, dict[str, float | None]]]
    default: str = "youden"
    split: str = "val"
    target_sensitivity: float = L.EVAL_TARGET_SENSITIVITY
    meta: dict[str, str] = field(default_factory=dict)
    temperatures: dict[str, dict[str, float | None]] = field(default_factory=dict)
    data: dict[str, object] = field(default_factory=dict)  # what they were fitted on: root, fingerprint, split, kind

    def get(self, task: str, output: str, method: str | None = None) -> float | None:
        """Threshold of one output (e.g. ``get("findings", "Effusion")``); None when unknown or undefined."""
        return self.methods.get(method or self.default, {}).get(task, {}).get(output)

    def temperature(self, task: str, output: str) -> float | None:
        """Temperature of one output; None when the run has none for it."""
        return self.temperatures.get(task, {}).get(output)

    def to_json(self) -> dict[str, object]:
        """The RUN/thresholds.json document (schema in docs/architecture.md)."""
        doc: dict[str, object] = {
            "schema": THRESHOLDS_SCHEMA,
            "split": self.split,
            "default": self.default,
            "target_sensitivity": self.target_sensitivity,
            **self.meta,
            **({"data": dict(self.data)} if self.data else {}),
            "methods": self.methods,
        }
        if self.temperatures:
            doc["temperatures"] = self.temperatures
        return doc


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


def _check_value(path: Path, where: str, value: object, *, positive: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RunError(f"{path}: {where} must be a finite number or null, got {value!r}")
    if positive and value <= 0:
        raise RunError(f"{path}: {where} must be positive, got {value!r}")
    return float(value)


def _parse_nested(path: Path, name: str, doc: object, *, positive: bool = False) -> dict[str, dict[str, float | None]]:
    if not isinstance(doc, dict):
        raise RunError(f"{path}: {name} must be an object of tasks")
    out: dict[str, dict[str, float | None]] = {}
    for task, values in doc.items():
        if not isinstance(values, dict):
            raise RunError(f"{path}: {name}.{task} must be an object of outputs")
        out[task] = {k: _check_value(path, f"{name}.{task}.{k}", v, positive=positive) for k, v in values.items()}
    return out


def load_thresholds(run: Path) -> Thresholds | None:
    """Read RUN/thresholds.json; None when the run has not been evaluated yet; RunError when the file is malformed."""
    path = Path(run) / THRESHOLDS_FILE
    doc = read_json_file(path, error=RunError)
    if doc is None:
        return None
    if not isinstance(doc, dict) or doc.get("schema") != THRESHOLDS_SCHEMA:
        raise RunError(f"{path}: expected an object with schema {THRESHOLDS_SCHEMA}")
    methods_doc = doc.get("methods")
    if not isinstance(methods_doc, dict) or not methods_doc:
        raise RunError(f"{path}: 'methods' must be a non-empty object")
    methods = {m: _parse_nested(path, f"methods.{m}", tasks) for m, tasks in methods_doc.items()}
    default = doc.get("default", "youden")
    if default not in methods:
        raise RunError(f"{path}: default method {default!r} is not among methods {sorted(methods)}")
    temperatures = _parse_nested(path, "temperatures", doc.get("temperatures", {}), positive=True)
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
        temperatures=temperatures,
    )


def to_logits(probs: np.ndarray) -> np.ndarray:
    """Inverse sigmoid with clipping (probabilities are what the predictor stores)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probs: np.ndarray, temperature: float | None) -> np.ndarray:
    """sigmoid(logit(p) / T); T = None leaves the probabilities as they are (as float64)."""
    if temperature is None:
        return np.asarray(probs, dtype=np.float64)
    if not temperature > 0:
        raise EvaluationError(f"temperature: must be positive, got {temperature}")
    return 1.0 / (1.0 + np.exp(-to_logits(probs) / temperature))


def calibrated_threshold(threshold: float | None, temperature: float | None) -> float | None:
    """A threshold chosen on uncalibrated probabilities, mapped through the same temperature as the probabilities."""
    if threshold is None:
        return None
    return float(apply_temperature(np.array([threshold]), temperature)[0])
