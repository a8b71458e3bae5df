"""Run-level evaluation: predict a run's split (and val), evaluate it with ``eval.evaluate.evaluate_outputs``, write
metrics.json, RUN/thresholds.json and the report (report.md, report.html, figures).

This sits in ``report/`` because it renders the report; ``eval/`` keeps the numbers and never imports ``report``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrmtl import labels as L
from cxrmtl.errors import EvaluationError
from cxrmtl.eval.datakind import DATA_KINDS, describe_data
from cxrmtl.eval.evaluate import (
    CLASSIFICATION_KINDS,
    EvalOptions,
    Evaluation,
    SplitOutputs,
    TaskOutputs,
    evaluate_outputs,
    split_outputs,
)
from cxrmtl.report.render import ReportData, render_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunEvaluation:
    """Where ``evaluate_run`` wrote things, and the evaluation itself."""

    out_dir: Path
    metrics_path: Path
    report_md: Path
    report_html: Path
    thresholds_path: Path | None
    evaluation: Evaluation
    report: ReportData | None = None  # what was rendered, so a later step can add its section (rerender)
    sections: tuple[object, ...] = ()

    def rerender(self, run: Path) -> RunEvaluation:
        """Render the report again with sections written since (the demo's triage step); no re-evaluation."""
        if self.report is None:
            return self
        split = self.evaluation.metrics.get("split", self.out_dir.name)
        render_report(self.report, out_dir=self.out_dir, sections=[*self.sections, *triage_sections(run, split)])
        return self


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
    data_root: Path | None = None,
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
    allow_data_mismatch: bool = False,
) -> RunEvaluation:
    """Predict ``split`` and val with the run's model, evaluate, write RUN/eval/<split>/ and RUN/thresholds.json.

    ``figures=False`` skips the matplotlib figures (the slowest part on a small split) for a quick numbers-only look.
    ``data_root`` / ``cache_dir`` default to RUN/data.json; other data is refused unless ``allow_data_mismatch``, and
    thresholds fitted on it do not replace RUN/thresholds.json (they go to RUN/eval/<split>/thresholds.json).
    """
    from cxrmtl.eval.expert import find_google_labels, load_google_labels
    from cxrmtl.eval.thresholds import save_thresholds
    from cxrmtl.fsio import write_json_atomic
    from cxrmtl.infer.predictor import load_run
    from cxrmtl.infer.tables import write_predictions_csv
    from cxrmtl.report.model_card import MODEL_CARD_FILE, write_model_card
    from cxrmtl.runs.data import open_run_data
    from cxrmtl.version import code_version

    if split not in ("test", "val"):
        raise EvaluationError(f"split: must be test or val, got {split!r}")
    if data_kind not in DATA_KINDS:
        raise EvaluationError(f"data kind: must be one of {', '.join(DATA_KINDS)}, got {data_kind!r}")
    options = options or EvalOptions()
    run = Path(run)
    loaded = load_run(run, which=which, device=device)
    rd = open_run_data(run, data=loaded.config.data, data_root=data_root, cache_dir=cache_dir,
                       allow_data_mismatch=allow_data_mismatch)
    index, cache, data_root = rd.index, rd.cache, Path(rd.record.data_root)
    ev = _predict(loaded, cache, index, split, batch_size)
    if ev is None:
        raise EvaluationError(f"split {split}: no readable images of this split in {data_root}")
    val = ev if split == "val" else _predict(loaded, cache, index, "val", batch_size)
    data = describe_data(index, ev.rows, data_root, kind=data_kind)
    # Phantom images reuse NIH file names: expert labels of real images would be matched to synthetic ones.
    expert_path = None if data.kind == "phantom" else find_google_labels(data_root, expert_labels)
    expert = load_google_labels(expert_path) if expert_path is not None else None
    info = {
        "run": str(run), "checkpoint": str(loaded.checkpoint), "epoch": loaded.epoch, "step": loaded.step,
        "code_version": code_version(), "created": _now(),
        "data": {"root": str(Path(data_root).resolve()), **data.to_json(), "n_index_images": len(index),
                 "expert_labels": str(expert_path) if expert_path else None,
                 "fingerprint": rd.record.fingerprint, "matches_run": rd.matches_run},
    }
    evaluation = evaluate_outputs(ev, val=val, expert=expert, options=options, info=info)
    out_dir = run / "eval" / split
    metrics_path = write_json_atomic(out_dir / "metrics.json", evaluation.metrics)
    thresholds_path = None
    if evaluation.thresholds is not None:
        thresholds_path = save_thresholds(run if rd.matches_run else out_dir, evaluation.thresholds,
                                          code_version=info["code_version"], data=_fitted_on(rd, "val"))
        if not rd.matches_run:
            log.warning("%s: thresholds fitted on other data than the run's; written to %s, RUN/thresholds.json "
                        "left as it was", data_root, thresholds_path)
    write_predictions_csv(out_dir / "predictions.csv", ev, loaded)  # after thresholds.json: predict's numbers
    figs = make_figures(ev, evaluation, log_path=run / "log.jsonl", n_bins=options.n_bins) if figures else []
    title = f"cxrmtl evaluation: {run.name} ({split})"
    report = ReportData(metrics=evaluation.metrics, figures=tuple(figs), title=title)
    paths = render_report(report, out_dir=out_dir, sections=[*sections, *triage_sections(run, split)])
    write_model_card(run, evaluation.metrics, out=out_dir / MODEL_CARD_FILE, config=loaded.config)
    return RunEvaluation(out_dir=out_dir, metrics_path=metrics_path, report_md=paths.markdown,
                         report_html=paths.html, thresholds_path=thresholds_path, evaluation=evaluation,
                         report=report, sections=tuple(sections))


def _fitted_on(rd: object, split: str) -> dict[str, object]:
    """What thresholds.json records about the data its thresholds were fitted on."""
    return {"root": rd.record.data_root, "fingerprint": rd.record.fingerprint, "split": split,
            "kind": rd.record.data_kind}


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def triage_sections(run: Path, split: str) -> list[object]:
    """The reading-room simulation's section (``cxrmtl triage simulate`` writes RUN/triage/<split>/), if any.

    Read as a file, not through ``triage`` (which sits above report): a simulation of an older model (section older
    than the run's checkpoints) is left out.
    """
    from cxrmtl.report.render import load_section

    path = Path(run) / "triage" / split / "triage_section.json"
    checkpoints = [p.stat().st_mtime for p in (Path(run) / "checkpoints").glob("*.pt")]
    if not path.is_file() or path.stat().st_mtime < max(checkpoints, default=0.0):
        return []  # none, or simulated with an older model: rerun `cxrmtl triage simulate`
    return [load_section(path)]
