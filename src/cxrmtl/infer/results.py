"""Per-image result dicts from task outputs: one definition for ``cxrmtl predict`` and evaluation's predictions.csv.

Input: ``outputs`` task name -> (N, out_dim) array of what ``Task.predict`` returns (model probabilities, years for
age). Each classification output is calibrated with the run's validation temperature when it has one
(``runs.operating``), thresholds come from RUN/thresholds.json (the default method, Youden's J unless the file says
otherwise). The schema (docs/predict.md)::

    {"findings": {name: {"probability", "threshold", "positive"}}, "abnormal": {"probability", "threshold",
     "positive"}, "age_years": float, "sex": {"p_female": float}, "view": {"p_ap": float},
     "calibrated": bool, "threshold_method": "youden" | None}

with keys only for the tasks the run has. ``positive`` is decided on the model's (uncalibrated) probability against
the threshold chosen on validation, exactly as evaluation applies it; ``threshold`` is shown mapped through the same
temperature as ``probability`` (temperature scaling is monotone, so both say the same thing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cxrmtl.runs.operating import Thresholds, apply_temperature, calibrated_threshold

Result = dict[str, Any]


def _operating_point(task: Any, column: int, values: np.ndarray, operating: Thresholds | None) -> list[dict]:
    """probability / threshold / positive of one classification output for every image."""
    name = task.output_names[column]
    temperature = operating.temperature(task.name, name) if operating is not None else None
    threshold = operating.get(task.name, name) if operating is not None else None
    probs = apply_temperature(values, temperature)
    shown = calibrated_threshold(threshold, temperature)
    positive = [None] * len(values) if threshold is None else [bool(v >= threshold) for v in values]
    return [{"probability": float(p), "threshold": shown, "positive": pos}
            for p, pos in zip(probs, positive, strict=True)]


def _findings(results: list[Result], task: Any, values: np.ndarray, operating: Thresholds | None) -> None:
    for k, name in enumerate(task.output_names):
        for result, point in zip(results, _operating_point(task, k, values[:, k], operating), strict=True):
            result.setdefault("findings", {})[name] = point


def _abnormal(results: list[Result], task: Any, values: np.ndarray, operating: Thresholds | None) -> None:
    for result, point in zip(results, _operating_point(task, 0, values[:, 0], operating), strict=True):
        result["abnormal"] = point


def _probability_of(key: str, field: str) -> Callable[..., None]:
    def write(results: list[Result], task: Any, values: np.ndarray, operating: Thresholds | None) -> None:
        temperature = operating.temperature(task.name, task.output_names[0]) if operating is not None else None
        for result, p in zip(results, apply_temperature(values[:, 0], temperature), strict=True):
            result[key] = {field: float(p)}

    return write


def _age(results: list[Result], task: Any, values: np.ndarray, operating: Thresholds | None) -> None:
    for result, years in zip(results, values[:, 0], strict=True):
        result["age_years"] = float(years)


# Task target -> how its outputs enter the result dict (a registry: a new task kind adds one entry).
RESULT_WRITERS: dict[str, Callable[[list[Result], Any, np.ndarray, Thresholds | None], None]] = {
    "findings": _findings,
    "abnormal": _abnormal,
    "age": _age,
    "sex": _probability_of("sex", "p_female"),
    "view": _probability_of("view", "p_ap"),
}


def is_calibrated(tasks: Sequence[Any], operating: Thresholds | None) -> bool:
    """True when at least one output of these tasks gets a validation temperature applied."""
    if operating is None:
        return False
    return any(operating.temperature(t.name, out) is not None for t in tasks for out in t.output_names)


def build_results(outputs: Mapping[str, np.ndarray], *, tasks: Sequence[Any], operating: Thresholds | None
                  ) -> list[Result]:
    """One result dict per row of ``outputs`` (task -> (N, out_dim) ``Task.predict`` values)."""
    n = len(next(iter(outputs.values()))) if outputs else 0
    results: list[Result] = [{} for _ in range(n)]
    for task in tasks:
        writer = RESULT_WRITERS.get(task.target)
        if writer is not None:
            writer(results, task, np.asarray(outputs[task.name]), operating)
    calibrated = is_calibrated(tasks, operating)
    method = operating.default if operating is not None else None
    for result in results:
        result["calibrated"] = calibrated
        result["threshold_method"] = method
    return results


def flat_columns(result: Result) -> dict[str, Any]:
    """One CSV row of a result: ``<Finding>``, ``<Finding>_positive``, ``abnormal``, ``abnormal_positive``,
    ``age_years``, ``p_female``, ``p_ap``, ``calibrated`` (only the keys the result has; positives may be empty)."""
    row: dict[str, Any] = {}
    for name, point in result.get("findings", {}).items():
        row[name] = point["probability"]
        row[f"{name}_positive"] = point["positive"]
    if "abnormal" in result:
        row["abnormal"] = result["abnormal"]["probability"]
        row["abnormal_positive"] = result["abnormal"]["positive"]
    if "age_years" in result:
        row["age_years"] = result["age_years"]
    if "sex" in result:
        row["p_female"] = result["sex"]["p_female"]
    if "view" in result:
        row["p_ap"] = result["view"]["p_ap"]
    row["calibrated"] = result.get("calibrated")
    return row
