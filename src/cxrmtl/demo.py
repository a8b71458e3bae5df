"""The main job on the built-in phantom: data -> cache -> multitask training -> evaluation -> report -> triage.

Every step writes an ordinary artefact that the other commands accept (``DIR/data`` is an NIH-layout folder,
``DIR/run`` a training run, ``DIR/run/eval/test`` an evaluation), and every step resumes: a second ``cxrmtl demo``
with the same ``--out`` reuses the phantom and the cache, continues training from its last checkpoint and
re-evaluates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrmtl.labels import DATA_ENTRY_NAMES

if TYPE_CHECKING:
    from cxrmtl.config import Config

CONFIG_DIR = Path(__file__).resolve().parent / "resources" / "configs"
log_info = logging.getLogger(__name__).info


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo flavour. ``full`` fits 15 minutes on 2 CPU cores; ``quick`` is a smoke check."""

    name: str
    patients: int
    phantom_size: int
    overrides: tuple[str, ...]
    bootstrap: int
    meaningful: bool


# Registry of demo flavours (see docs/demo.md for how the sizes were chosen and BENCHMARKS.md for timings).
DEMO_PLANS: dict[str, DemoPlan] = {
    "full": DemoPlan(
        # 10 epochs of ~1,450 training images (220 steps of 64): 0.873 mean test AUROC in bench_recipe at demo scale;
        # affordable in 10 minutes because amp auto trains in bf16 on CPUs with AVX512-BF16/AMX (BENCHMARKS.md).
        name="full", patients=500, phantom_size=256, overrides=("train.epochs=10",), bootstrap=1000,
        meaningful=True,
    ),
    "quick": DemoPlan(
        name="quick", patients=120, phantom_size=64,
        overrides=("data.image_size=64", "train.epochs=1", "train.max_steps=12", "train.checkpoint_every=6",
                   "optim.warmup_steps=2"),
        bootstrap=100, meaningful=False,
    ),
}


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things, and the headline numbers."""

    out: Path
    data: Path
    cache: Path
    run: Path
    report_html: Path
    summary: str
    seconds: float


def _phantom_done(data: Path) -> bool:
    # write_phantom writes Data_Entry last, so its presence means the phantom is complete.
    return any((data / name).is_file() for name in DATA_ENTRY_NAMES)


def _step(log: Callable[[str], None], number: int, text: str) -> None:
    log(f"\n[{number}/6] {text}")


def make_phantom(plan: DemoPlan, data: Path, *, workers: int, log: Callable[[str], None],
                 progress: bool = True) -> None:
    """Write the boosted-prevalence phantom unless a complete one is already there."""
    from cxrmtl.phantom.generate import write_phantom

    if _phantom_done(data):
        log(f"phantom already in {data}: reused")
        return
    if data.exists() and any(data.iterdir()):
        # An interrupted phantom (no Data_Entry yet): its images are reproducible, so start it again.
        import shutil

        shutil.rmtree(data)
    report = write_phantom(data, patients=plan.patients, size=plan.phantom_size, seed=0, prevalence="boosted",
                           workers=workers, progress=progress)
    log(f"phantom: {report.images} images of {report.patients} patients, {report.boxes} boxes -> {data}")


def demo_config(plan: DemoPlan, *, extra: tuple[str, ...] = ()) -> Config:
    """The demo's training config: configs/demo_phantom.yaml plus the flavour's overrides."""
    from cxrmtl.config import load_config

    return load_config(CONFIG_DIR / "demo_phantom.yaml", [*plan.overrides, *extra])


def run_demo(*, out: Path, quick: bool = False, workers: int = 2, device: str = "auto", progress: bool = True,
             log: Callable[[str], None] = log_info) -> DemoResult:
    """Run the whole demo into ``out`` and return where the results are."""
    import dataclasses

    from cxrmtl.eval.evaluate import EvalOptions
    from cxrmtl.report.evaluation import evaluate_run
    from cxrmtl.runs.data import open_run_data
    from cxrmtl.runs.layout import RunDir
    from cxrmtl.train.loop import format_summary, train
    from cxrmtl.triage.run import simulate_run

    start = time.perf_counter()
    plan = DEMO_PLANS["quick" if quick else "full"]
    out = Path(out)
    data, cache, run = out / "data", out / "cache", out / "run"
    out.mkdir(parents=True, exist_ok=True)
    if not plan.meaningful:
        log("--quick: a smoke check of every step on a tiny phantom; its numbers mean nothing.")

    _step(log, 1, f"phantom ({plan.patients} patients, {plan.phantom_size} px, boosted prevalence)")
    make_phantom(plan, data, workers=workers, log=log, progress=progress)

    cfg = demo_config(plan, extra=() if progress else ("train.progress=false",))
    _step(log, 2, f"preprocessing cache ({cfg.data.image_size} px)")
    view = open_run_data(data=dataclasses.replace(cfg.data, cache_workers=workers), data_root=data,
                         cache_dir=cache, progress=progress).cache
    readable = int(view.ok.sum())
    log(f"cache: {len(view)} images, {readable} readable, {len(view) - readable} unreadable, {view.size} px -> {cache}")

    _step(log, 3, f"multitask training ({cfg.model.backbone}, tasks {', '.join(cfg.tasks.specs)})")
    resume = RunDir(run).has_run()  # a rerun continues (from step 0 when killed before the first checkpoint)
    summary = train(cfg, data_root=data, out=run, cache_dir=cache, resume=resume, device=device)
    table = format_summary(summary)
    log(table)

    _step(log, 4, "evaluation on the test split (patient bootstrap CIs, calibration, subgroups, localisation)")
    sections = _localization_sections(run, cfg=cfg, log=log)
    result = evaluate_run(run, split="test", data_kind="phantom",
                          options=EvalOptions(n_bootstrap=plan.bootstrap), device="cpu", sections=sections)

    _step(log, 5, "triage: reading-room simulation, FIFO vs urgency vs urgency + upper limit (test split)")
    triage = simulate_run(run, data_root=data, split="test", cache_dir=cache)
    log(triage.summary)
    result.rerender(run)  # the report now carries the triage section too

    _step(log, 6, "summary")
    log(_headline(result.evaluation.metrics))
    seconds = time.perf_counter() - start
    log(f"\nreport: {result.report_html}\ntriage: {triage.markdown_path}\nrun:    {run}\n"
        f"time:   {seconds / 60:.1f} min")
    return DemoResult(out=out, data=data, cache=cache, run=run, report_html=result.report_html, summary=table,
                      seconds=seconds)


def _localization_sections(run: Path, *, cfg: Config, log: Callable[[str], None]) -> list:
    """Grad-CAM localisation against the phantom's boxes (Wang et al.'s protocol), as a report section."""
    from cxrmtl.infer.predictor import load_run
    from cxrmtl.localize.run import localization_section, localize_run, write_outputs
    from cxrmtl.runs.data import open_run_data

    loaded = load_run(run, which="best", device="cpu")
    rd = open_run_data(run, data=cfg.data)  # the data and cache RUN/data.json records
    out_dir = run / "eval" / "test" / "localization"
    result = localize_run(loaded, rd.cache, rd.index, split="test", gallery_dir=out_dir / "gallery")
    if not result.cases:
        log("localisation: no boxed test images; section left out")
        return []
    write_outputs(result, out_dir)
    log(f"localisation: {len(result.cases)} boxed cases scored -> {out_dir}")
    return [localization_section(result, gallery_dir=out_dir / "gallery")]


def _ci_cell(entry: dict | None) -> tuple[str, str]:
    if not entry or entry.get("value") is None:
        return "undefined", ""
    low, high = entry.get("low"), entry.get("high")
    return f"{entry['value']:.3f}", (f"{low:.3f}-{high:.3f}" if low is not None and high is not None else "")


def _headline(metrics: dict) -> str:
    """A short table: mean AUROC over the findings, then each auxiliary output's primary number (metrics.json)."""
    from cxrmtl.report.render import mean_label

    lines = ["| task | metric | value | 95% CI |", "|---|---|---|---|"]
    findings = metrics.get("findings") or {}
    value, ci = _ci_cell(findings.get("auroc_mean"))
    lines.append(f"| findings ({mean_label(findings.get('auroc_mean'), findings.get('names', []))}) | AUROC | "
                 f"{value} | {ci} |")
    for task, entry in metrics.get("tasks", {}).items():
        if entry.get("kind") == "multilabel":
            continue
        for output, numbers in entry.get("outputs", {}).items():
            key = "mae" if entry.get("kind") == "regression" else "auroc"
            value, ci = _ci_cell(numbers.get(key))
            lines.append(f"| {task} ({output}) | {'MAE (years)' if key == 'mae' else 'AUROC'} | {value} | {ci} |")
    return "\n".join(lines)
