"""Validation curves of the ablation's arms, and whether each had stopped rising by the end of its budget.

Every arm is scored with its final checkpoint (docs/ablation.md); that is a fair rule only at a budget where no arm
is still improving, otherwise the comparison measures who learns faster, not who ends better. Training logs every
epoch's validation metrics to RUN/log.jsonl (``train.loop``: ``val/<task>/auroc/<finding>``); this module reads them
back, averages per arm (over the arm's findings, then over seeds; a single-task arm averages each model's own
finding) at each evaluation, and gives a verdict per arm:

- ``plateaued``: the best value of the last third of the evaluations is at most ``labels.ABLATION_PLATEAU_TOLERANCE``
  above the best value before it (it may also have fallen: overfitting is not "still rising");
- ``still rising``: it gained more than that in the last third; a longer budget would change the final checkpoint;
- ``too few evaluations``: fewer than 3 (one per epoch), so nothing can be said;
- ``undefined evaluations``: some evaluation has no value for some seed (e.g. a finding with one class on val).

The validation split is only read here, never used to choose a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cxrmtl import labels

MIN_EVALUATIONS = 3
VAL_PREFIX = "val/findings"


class _Record(Protocol):
    arm: str
    seed: int
    run: str


def run_curve(log_path: Path) -> dict[int, dict[str, float]]:
    """Step -> {finding: val AUROC} of each epoch record of one run's log (the findings head's per-finding values;
    undefined ones are left out; a step logged twice, by a resume, keeps its last record)."""
    from cxrmtl.report.figures import read_log

    out: dict[int, dict[str, float]] = {}
    if not log_path.is_file():
        return out
    for record in read_log(log_path):
        if record.get("event") != "epoch" or not isinstance(record.get("step"), int):
            continue
        values = {}
        for key, value in record.items():
            head, sep, finding = key.rpartition("/auroc/")
            if sep and head.startswith(VAL_PREFIX) and _finite(value):
                values[finding] = float(value)
        out[int(record["step"])] = values
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def plateau_verdict(values: Sequence[float], *, tolerance: float = labels.ABLATION_PLATEAU_TOLERANCE) -> dict[str, Any]:
    """Verdict on one curve (see the module docstring): ``verdict``, ``gain_last_third`` (best of the last third minus
    the best before it), ``best``, ``best_at`` (0-based evaluation), ``final``."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < MIN_EVALUATIONS or len(finite) != len(values):
        why = "undefined evaluations" if len(finite) != len(values) else "too few evaluations"
        return {"verdict": why, "gain_last_third": None, "best": max(finite, default=None),
                "best_at": int(np.argmax(finite)) if finite else None, "final": finite[-1] if finite else None}
    arr = np.asarray(values, dtype=np.float64)
    tail = max(1, math.ceil(len(arr) / 3))
    gain = float(arr[-tail:].max() - arr[:-tail].max())
    verdict = "plateaued" if gain <= tolerance else "still rising"
    return {"verdict": verdict, "gain_last_third": gain, "best": float(arr.max()), "best_at": int(arr.argmax()),
            "final": float(arr[-1])}


def _arm_series(curves: Sequence[tuple[int, dict[int, dict[str, float]]]],
                subset: Sequence[str] | None) -> tuple[list[int], list[float]]:
    """Mean over seeds of each seed's mean over its findings (``subset`` of them when given), at the steps every
    run of the arm logged. ``curves``: (seed, run curve) per run; the runs of one seed are merged (single-task)."""
    steps = sorted(set.intersection(*(set(c) for _, c in curves))) if curves else []
    by_seed: dict[int, list[dict[int, dict[str, float]]]] = {}
    for seed, curve in curves:
        by_seed.setdefault(seed, []).append(curve)
    values = []
    for step in steps:
        per_seed = []
        for runs in by_seed.values():
            merged = {f: v for curve in runs for f, v in curve[step].items()}
            picked = [v for f, v in merged.items() if subset is None or f in subset]
            per_seed.append(float(np.mean(picked)) if picked else math.nan)
        values.append(float(np.mean(per_seed)) if all(math.isfinite(v) for v in per_seed) else math.nan)
    return steps, values


def arm_curves(out: Path, records: Sequence[_Record], *, cut_findings: Sequence[str] = ()) -> dict[str, Any]:
    """Per arm: the steps of its evaluations, the mean val AUROC at each (``values``) with its plateau verdict,
    and the same over the cut findings (``cut``) under a label cut when the arm predicts them."""
    from cxrmtl.runs.layout import LOG_FILE

    by_arm: dict[str, list[tuple[int, dict[int, dict[str, float]]]]] = {}
    for record in records:
        by_arm.setdefault(record.arm, []).append((record.seed, run_curve(out / record.run / LOG_FILE)))
    result = {}
    for arm, curves in by_arm.items():
        steps, values = _arm_series(curves, None)
        entry: dict[str, Any] = {"steps": steps, "values": [_clean(v) for v in values], **plateau_verdict(values)}
        predicted = {f for _, c in curves for per_step in c.values() for f in per_step}
        if cut_findings and set(cut_findings) <= predicted:
            _, cut_values = _arm_series(curves, cut_findings)
            entry["cut"] = {"values": [_clean(v) for v in cut_values], **plateau_verdict(cut_values)}
        result[arm] = entry
    return result


def _clean(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
