"""One evaluation: every task's metrics with patient-clustered CIs, operating points, calibration, subgroups and
expert labels, on plain arrays (``evaluate_outputs``), plus the wiring to a run folder (``evaluate_run``).

Validation predictions are used only to choose things (thresholds, temperatures); everything reported is measured
on the evaluated split. The result is the metrics.json document (schema in docs/evaluation.md), JSON-safe: undefined
values are None, never NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------- run folder wiring
# Files whose presence in a data folder marks it as a synthetic phantom (written by `cxrmtl phantom` or by hand).
PHANTOM_MARKERS: tuple[str, ...] = ("PHANTOM", "PHANTOM.txt", "phantom.json", ".cxrmtl-phantom")
DATA_KINDS: tuple[str, ...] = ("auto", "nih", "phantom", "subset")


def detect_data_kind(root: Path, *, n_images: int, n_test: int) -> str:
    """"phantom" when a marker file is present, "nih" for the complete release (112,120 images, 25,596 in the
    official test list, FACTS.md), otherwise "subset": any other NIH-layout folder, never compared with papers."""
    if any((Path(root) / name).exists() for name in PHANTOM_MARKERS):
        return "phantom"
    full = n_images == L.NIH_NUM_IMAGES and n_test == L.NIH_SPLIT_COUNTS["test"][0]
    return "nih" if full else "subset"


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
                        tasks=outs)


@dataclass(frozen=True)
class RunEvaluation:
    """Where ``evaluate_run`` wrote things, and the evaluation itself."""

    out_dir: Path
    metrics_path: Path
    report_md: Path
    report_html: Path
    thresholds_path: Path | None
    evaluation: Evaluation


def _binary_outputs(ev: SplitOutputs) -> TaskOutputs | None:
    """Non-finding binary outputs (abnormal, sex, view, ...) gathered for one ROC figure."""
    cols = [(t, k) for t in ev.tasks.values() if t.kind in CLASSIFICATION_KINDS
            for k, n in enumerate(t.names) if n not in L.FINDING_INDEX]
    if not cols:
        return None
    names = tuple(f"{t.name}" if t.names == (t.name,) else f"{t.name}/{t.names[k]}" for t, k in cols)
    stack = [np.stack([getattr(t, a)[:, k] for t, k in cols], axis=1) for a in ("scores", "targets", "mask")]
    return TaskOutputs("auxiliary", "binary", names, stack[0], stack[1], stack[2].astype(bool))


def make_figures(ev: SplitOutputs, evaluation: Evaluation, *, log_path: Path | None, n_bins: int) -> list[object]:
    """ROC, PR and reliability grids for the findings, a ROC grid for other binary outputs, training curves."""
    from cxrmtl.report import figures as F

    figs = []
    findings = ev.findings()
    metrics = evaluation.metrics
    if findings is not None:
        per_output = {name: {"auroc": metrics["findings"]["auroc"].get(name)} for name in findings.names}
        for task in metrics["tasks"].values():
            for name, out in task.get("outputs", {}).items():
                if name in per_output:
                    per_output[name]["auprc"] = out.get("auprc")
        temps = {n: t for task in evaluation.temperatures.values() for n, t in task.items()}
        figs += [F.roc_grid(findings, per_output), F.pr_grid(findings, per_output),
                 F.reliability_grid(findings, temps, n_bins=n_bins)]
    aux = _binary_outputs(ev)
    if aux is not None:
        aux_metrics = {}
        for name, task in metrics["tasks"].items():
            for out, doc in task.get("outputs", {}).items():
                aux_metrics[name if out == name else f"{name}/{out}"] = doc
        figs.append(F.roc_grid(aux, aux_metrics))
    if log_path is not None and Path(log_path).is_file():
        curves = F.training_curves(F.read_log(log_path))
        if curves is not None:
            figs.append(curves)
    return figs


def _predict(loaded: object, cache: object, index: object, split: str, batch_size: int) -> SplitOutputs | None:
    from cxrmtl.infer.predictor import predict_split

    if len(index.rows(split)) == 0:
        return None
    preds = predict_split(loaded, cache, index, split, batch_size=batch_size)
    if len(preds) == 0:
        return None
    return split_outputs(preds, loaded.tasks, index.table)


def evaluate_run(
    run: Path,
    *,
    data_root: Path,
    split: str = "test",
    cache_dir: Path | None = None,
    options: EvalOptions | None = None,
    which: str = "best",
    device: str = "cpu",
    batch_size: int = 64,
    expert_labels: Path | None = None,
    data_kind: str = "auto",
    sections: Sequence[object] = (),
    figures: bool = True,
) -> RunEvaluation:
    """Predict ``split`` and val with the run's model, evaluate, write RUN/eval/<split>/ and RUN/thresholds.json.

    ``figures=False`` skips the matplotlib figures (the slowest part on a small split) for a quick numbers-only look.
    """
    from cxrmtl.data.cache import build_cache, open_cache
    from cxrmtl.data.nih import load_index
    from cxrmtl.eval.expert import find_google_labels, load_google_labels
    from cxrmtl.eval.thresholds import save_thresholds
    from cxrmtl.fsio import write_json_atomic
    from cxrmtl.infer.predictor import load_run
    from cxrmtl.infer.tables import write_predictions_csv
    from cxrmtl.report.render import ReportData, render_report
    from cxrmtl.train.loop import default_cache_dir
    from cxrmtl.version import code_version

    if split not in ("test", "val"):
        raise EvaluationError(f"split: must be test or val, got {split!r}")
    if data_kind not in DATA_KINDS:
        raise EvaluationError(f"data kind: must be one of {', '.join(DATA_KINDS)}, got {data_kind!r}")
    options = options or EvalOptions()
    run = Path(run)
    loaded = load_run(run, which=which, device=device)
    d = loaded.config.data
    index = load_index(data_root, val_fraction=d.val_fraction, split_seed=d.split_seed)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(data_root=data_root, out=run, size=d.image_size)
    build_cache(index, cache_dir, size=d.image_size, progress=False)
    cache = open_cache(cache_dir)
    ev = _predict(loaded, cache, index, split, batch_size)
    if ev is None:
        raise EvaluationError(f"split {split}: no readable images of this split in {data_root}")
    val = ev if split == "val" else _predict(loaded, cache, index, "val", batch_size)
    kind = data_kind if data_kind != "auto" else detect_data_kind(
        data_root, n_images=len(index), n_test=len(index.rows("test")))
    # Phantom images reuse NIH file names: expert labels of real images would be matched to synthetic ones.
    expert_path = None if kind == "phantom" else find_google_labels(data_root, expert_labels)
    expert = load_google_labels(expert_path) if expert_path is not None else None
    info = {
        "run": str(run), "checkpoint": str(loaded.checkpoint), "epoch": loaded.epoch, "step": loaded.step,
        "code_version": code_version(), "created": _now(),
        "data": {"root": str(Path(data_root).resolve()), "kind": kind, "n_index_images": len(index),
                 "expert_labels": str(expert_path) if expert_path else None},
    }
    evaluation = evaluate_outputs(ev, val=val, expert=expert, options=options, info=info)
    out_dir = run / "eval" / split
    metrics_path = write_json_atomic(out_dir / "metrics.json", evaluation.metrics)
    thresholds_path = None
    if evaluation.thresholds is not None:
        thresholds_path = save_thresholds(run, evaluation.thresholds, code_version=info["code_version"])
    write_predictions_csv(out_dir / "predictions.csv", ev, loaded)  # after thresholds.json: predict's numbers
    figs = make_figures(ev, evaluation, log_path=run / "log.jsonl", n_bins=options.n_bins) if figures else []
    title = f"cxrmtl evaluation: {run.name} ({split})"
    paths = render_report(ReportData(metrics=evaluation.metrics, figures=tuple(figs), title=title), out_dir=out_dir,
                          sections=list(sections))
    return RunEvaluation(out_dir=out_dir, metrics_path=metrics_path, report_md=paths.markdown,
                         report_html=paths.html, thresholds_path=thresholds_path, evaluation=evaluation)


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
