"""One evaluation: every task's metrics with patient-clustered CIs, operating points, calibration, subgroups and
expert labels, on plain arrays (``evaluate_outputs``). The run-level wiring (predict a run, write the report) is
``cxrmtl.report.evaluation.evaluate_run``: ``eval`` computes numbers and never imports ``report``.

Validation predictions are used only to choose things (thresholds, temperatures); everything reported is measured
on the evaluated split. The result is the metrics.json document (schema in docs/evaluation.md), JSON-safe: undefined
values are None, never NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from cxrmtl import labels as L
from cxrmtl.errors import EvaluationError
from cxrmtl.eval.bootstrap import BootstrapResult, PatientResampler, bootstrap_mean, bootstrap_metrics
from cxrmtl.eval.calibration import apply_temperature, at_bound, expected_calibration_error, fit_temperature
from cxrmtl.eval.expert import expert_auroc
from cxrmtl.eval.metrics import mean_absolute_error
from cxrmtl.eval.subgroups import subgroup_auroc
from cxrmtl.eval.thresholds import Thresholds, choose_thresholds, operating_metrics

METRICS_SCHEMA = 1
CLASSIFICATION_KINDS = ("multilabel", "binary")
REGRESSION_KINDS = ("regression",)


@dataclass(frozen=True)
class TaskOutputs:
    """One task's predictions on a split: scores (N, K) probabilities (or years), targets and mask (N, K)."""

    name: str
    kind: str
    names: tuple[str, ...]
    scores: np.ndarray
    targets: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        n_out = len(self.names)
        for field_name in ("scores", "targets", "mask"):
            arr = getattr(self, field_name)
            if arr.ndim != 2 or arr.shape[1] != n_out or arr.shape[0] != self.scores.shape[0]:
                raise EvaluationError(f"task {self.name}: {field_name} has shape {arr.shape}, expected (N, {n_out})")
        if self.kind not in CLASSIFICATION_KINDS + REGRESSION_KINDS:
            raise EvaluationError(f"task {self.name}: unknown kind {self.kind!r}")
        if not np.all(np.isfinite(self.scores)):
            raise EvaluationError(f"task {self.name}: scores contain NaN or infinite values")


@dataclass(frozen=True)
class SplitOutputs:
    """Everything evaluation needs about one split, row-aligned: images, patients, metadata and task outputs."""

    split: str
    images: np.ndarray  # (N,) image names
    patient_ids: np.ndarray  # (N,)
    metadata: pd.DataFrame  # N rows; columns sex, age, view (NIHIndex.table codes) where known
    tasks: dict[str, TaskOutputs] = field(default_factory=dict)
    rows: np.ndarray | None = None  # (N,) NIHIndex rows of the images, when they come from an index

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.patient_ids) != n or len(self.metadata) != n:
            counts = f"{len(self.patient_ids)} patient ids, {len(self.metadata)} metadata rows"
            raise EvaluationError(f"split {self.split}: {n} images but {counts}")
        for task in self.tasks.values():
            if task.scores.shape[0] != n:
                raise EvaluationError(f"split {self.split}: task {task.name} has {task.scores.shape[0]} rows, not {n}")

    def findings(self) -> TaskOutputs | None:
        """All ChestX-ray14 finding outputs of the run gathered in canonical order (None when the run has none)."""
        cols: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for task in self.tasks.values():
            if task.kind not in CLASSIFICATION_KINDS:
                continue
            for k, name in enumerate(task.names):
                if name in L.FINDING_INDEX and name not in cols:
                    cols[name] = (task.scores[:, k], task.targets[:, k], task.mask[:, k])
        if not cols:
            return None
        names = tuple(n for n in L.FINDINGS if n in cols)
        stack = [np.stack([cols[n][i] for n in names], axis=1) for i in range(3)]
        return TaskOutputs("findings", "multilabel", names, stack[0], stack[1], stack[2].astype(bool))


@dataclass(frozen=True)
class EvalOptions:
    """Knobs of one evaluation (defaults in labels.py, EVAL_* block)."""

    n_bootstrap: int = L.EVAL_BOOTSTRAP
    seed: int = 0
    level: float = L.EVAL_CI_LEVEL
    target_sensitivity: float = L.EVAL_TARGET_SENSITIVITY
    n_bins: int = L.EVAL_ECE_BINS


@dataclass(frozen=True)
class Evaluation:
    """The metrics.json document, the thresholds chosen on val (None without val) and per-task temperatures."""

    metrics: dict[str, object]
    thresholds: Thresholds | None
    temperatures: dict[str, dict[str, float | None]]


def _opt(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _interval(res: BootstrapResult, k: int) -> dict[str, object]:
    return {
        "value": _opt(res.point[k]),
        "low": _opt(res.low[k]),
        "high": _opt(res.high[k]),
        "n_valid": int(res.n_valid[k]),
    }


def _mean_interval(res: BootstrapResult) -> dict[str, object]:
    point, low, high, n_valid = bootstrap_mean(res)
    n_defined = int(np.isfinite(res.point).sum())
    return {"value": point, "low": low, "high": high, "n_valid": n_valid, "n_outputs": n_defined}


def _labels01(task: TaskOutputs) -> np.ndarray:
    """Targets as 0/1 with masked entries (which may hold anything, even NaN) set to 0; the mask excludes them."""
    return np.where(task.mask, task.targets, 0.0).astype(np.int8)


def _column(task: TaskOutputs, k: int) -> tuple[np.ndarray, np.ndarray]:
    keep = task.mask[:, k]
    return task.scores[keep, k], task.targets[keep, k]


def _calibration(task: TaskOutputs, k: int, temperature: float | None, n_bins: int) -> dict[str, object]:
    scores, targets = _column(task, k)
    return {
        "ece": _opt(expected_calibration_error(scores, targets, n_bins=n_bins)),
        "temperature": temperature,
        "temperature_at_bound": at_bound(temperature),
        "ece_scaled": _opt(expected_calibration_error(apply_temperature(scores, temperature), targets, n_bins=n_bins))
        if temperature is not None
        else None,
    }


def _operating(task: TaskOutputs, k: int, thresholds: Thresholds | None) -> dict[str, object]:
    if thresholds is None:
        return {}
    scores, targets = _column(task, k)
    out = {}
    for method in thresholds.methods:
        thr = thresholds.get(task.name, task.names[k], method)
        out[method] = {"threshold": thr, **operating_metrics(scores, targets, thr)}
    return out


def _fit_temperatures(val: TaskOutputs | None) -> dict[str, float | None]:
    if val is None:
        return {}
    return {name: fit_temperature(*_column(val, k)) for k, name in enumerate(val.names)}


def _classification(
    task: TaskOutputs, val: TaskOutputs | None, resampler: PatientResampler, thresholds: Thresholds | None,
    options: EvalOptions,
) -> tuple[dict[str, object], dict[str, float | None], BootstrapResult]:
    res = bootstrap_metrics(
        task.scores, _labels01(task), mask=task.mask, resampler=resampler, level=options.level
    )
    temps = _fit_temperatures(val)
    outputs = {}
    for k, name in enumerate(task.names):
        _, targets = _column(task, k)
        outputs[name] = {
            "n": int(targets.size),
            "n_pos": int(targets.sum()),
            "prevalence": _opt(targets.mean()) if targets.size else None,
            "auroc": _interval(res["auroc"], k),
            "auprc": _interval(res["auprc"], k),
            "calibration": _calibration(task, k, temps.get(name), options.n_bins),
            "operating_points": _operating(task, k, thresholds),
        }
    summary = {"auroc_mean": _mean_interval(res["auroc"]), "auprc_mean": _mean_interval(res["auprc"])}
    doc = {"kind": task.kind, "outputs": outputs, "summary": summary}
    return doc, temps, res["auroc"]


def _regression(task: TaskOutputs, resampler: PatientResampler, options: EvalOptions) -> dict[str, object]:
    outputs = {}
    for k, name in enumerate(task.names):
        keep = task.mask[:, k] & np.isfinite(task.targets[:, k])
        err = np.abs(task.scores[:, k] - task.targets[:, k])
        err = np.where(keep, err, 0.0)
        # Patient-clustered CI of the MAE: per-patient error sums and counts times the resample counts.
        n_pat = resampler.patients.size
        err_sum = np.bincount(resampler.inverse, weights=err, minlength=n_pat)
        count = np.bincount(resampler.inverse, weights=keep.astype(np.float64), minlength=n_pat)
        with np.errstate(invalid="ignore", divide="ignore"):
            draws = (resampler.counts @ err_sum) / (resampler.counts @ count)
        draws = draws[np.isfinite(draws)]
        alpha = (1.0 - options.level) / 2.0
        low, high = np.quantile(draws, [alpha, 1 - alpha]) if draws.size else (None, None)
        mae = mean_absolute_error(task.scores[:, k], task.targets[:, k], keep)
        outputs[name] = {
            "n": int(keep.sum()),
            "mae": {"value": mae, "low": _opt(low), "high": _opt(high), "n_valid": int(draws.size)},
        }
    return {"kind": task.kind, "outputs": outputs}


def _thresholds(val: SplitOutputs | None, options: EvalOptions) -> Thresholds | None:
    if val is None:
        return None
    binary = {
        t.name: (t.scores, t.targets, t.mask, t.names) for t in val.tasks.values() if t.kind in CLASSIFICATION_KINDS
    }
    return choose_thresholds(binary, target_sensitivity=options.target_sensitivity, split=val.split)


def evaluate_outputs(
    ev: SplitOutputs,
    *,
    val: SplitOutputs | None = None,
    expert: pd.DataFrame | None = None,
    options: EvalOptions | None = None,
    info: Mapping[str, object] | None = None,
) -> Evaluation:
    """Evaluate one split. ``val`` (the validation split's outputs) picks thresholds and temperatures."""
    options = options or EvalOptions()
    if not ev.tasks:
        raise EvaluationError(f"split {ev.split}: no task outputs to evaluate")
    resampler = PatientResampler(ev.patient_ids, n_resamples=options.n_bootstrap, seed=options.seed)
    thresholds = _thresholds(val, options)
    tasks_doc: dict[str, object] = {}
    temperatures: dict[str, dict[str, float | None]] = {}
    aurocs: dict[str, BootstrapResult] = {}
    for name, task in ev.tasks.items():
        if task.kind in REGRESSION_KINDS:
            tasks_doc[name] = _regression(task, resampler, options)
            continue
        val_task = val.tasks.get(name) if val is not None else None
        tasks_doc[name], temperatures[name], aurocs[name] = _classification(
            task, val_task, resampler, thresholds, options
        )
    metrics: dict[str, object] = {
        "schema": METRICS_SCHEMA,
        **dict(info or {}),
        "split": ev.split,
        "n_images": len(ev.images),
        "n_patients": int(resampler.patients.size),
        "bootstrap": {"n_resamples": options.n_bootstrap, "seed": options.seed, "level": options.level,
                      "unit": "patient"},
        "thresholds_from": val.split if val is not None else None,
        "tasks": tasks_doc,
        "findings": _findings_doc(ev, resampler, expert, options, aurocs),
    }
    operating = with_temperatures(thresholds, temperatures)
    return Evaluation(metrics=metrics, thresholds=operating, temperatures=temperatures)


def with_temperatures(thresholds: Thresholds | None, temperatures: Mapping[str, Mapping[str, float | None]]
                      ) -> Thresholds | None:
    """The operating file's content: val thresholds plus the temperatures inference should apply (one fitted at its
    search bound is left out, None: scaling alone cannot calibrate that output, see calibration.at_bound)."""
    if thresholds is None:
        return None
    usable = {task: {out: (None if at_bound(t) else t) for out, t in temps.items()}
              for task, temps in temperatures.items()}
    return replace(thresholds, temperatures=usable)


def _findings_auroc(
    findings: TaskOutputs, ev: SplitOutputs, resampler: PatientResampler, options: EvalOptions,
    aurocs: Mapping[str, BootstrapResult],
) -> BootstrapResult:
    """AUROC of the gathered findings, reusing the "findings" task's bootstrap when it holds exactly these columns."""
    task = ev.tasks.get("findings")
    if task is not None and task.names == findings.names and "findings" in aurocs:
        return aurocs["findings"]
    return bootstrap_metrics(
        findings.scores, _labels01(findings), metrics=("auroc",), mask=findings.mask,
        resampler=resampler, level=options.level,
    )["auroc"]


def _findings_doc(
    ev: SplitOutputs, resampler: PatientResampler, expert: pd.DataFrame | None, options: EvalOptions,
    aurocs: Mapping[str, BootstrapResult],
) -> dict[str, object]:
    """Finding-level extras: per-finding AUROC (all tasks gathered), subgroups and expert-label AUROC."""
    findings = ev.findings()
    if findings is None:
        return {"names": [], "auroc": {}, "auroc_mean": None, "subgroups": [], "expert": []}
    res = _findings_auroc(findings, ev, resampler, options, aurocs)
    subgroups = subgroup_auroc(
        findings.scores, _labels01(findings), findings.mask, ev.metadata,
        names=findings.names, resampler=resampler, overall=res.point, level=options.level,
    )
    experts = [] if expert is None else expert_auroc(
        ev.images, findings.scores, findings.names, expert, resampler=resampler, level=options.level
    )
    return {
        "names": list(findings.names),
        "auroc": {name: _interval(res, k) for k, name in enumerate(findings.names)},
        "auroc_mean": _mean_interval(res),
        "subgroups": [row.to_json() for row in subgroups],
        "expert": [row.to_json() for row in experts],
    }


# ---------------------------------------------------------------------------------------------- run-level helpers
def split_outputs(preds: object, tasks: Sequence[object], table: pd.DataFrame) -> SplitOutputs:
    """SplitOutputs from a ``cxrmtl.infer.predictor.Predictions`` and the NIHIndex table (for names, metadata)."""
    rows = np.asarray(preds.rows)
    meta = table.iloc[rows][[c for c in ("sex", "age", "view") if c in table.columns]].reset_index(drop=True)
    outs = {}
    for task in tasks:
        name = task.name
        outs[name] = TaskOutputs(
            name=name, kind=task.kind, names=tuple(preds.output_names[name]),
            scores=np.asarray(preds.outputs[name], dtype=np.float64),
            targets=np.asarray(preds.targets[name], dtype=np.float64),
            mask=np.asarray(preds.masks[name], dtype=bool),
        )
    images = table["image"].to_numpy()[rows]
    return SplitOutputs(split=preds.split, images=images, patient_ids=np.asarray(preds.patient_ids), metadata=meta,
                        tasks=outs, rows=rows)
