"""``cxrmtl evaluate RUN``: metrics with CIs, operating points, calibration, subgroups and the report."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrmtl import labels as L
from cxrmtl.cli._options import Checkpoint, DataKind, Device, EvalSplit, checkpoint_option, device_option

ORDER = 50


def evaluate_command(
    run: Path = typer.Argument(..., help="Run folder made by `cxrmtl train`."),
    data: Path | None = typer.Option(
        None, "--data", help="NIH-layout folder to evaluate on. Default: the run's own (RUN/data.json)."),
    split: EvalSplit = typer.Option("test", "--split", help="Split to evaluate (operating points come from val)."),
    bootstrap: int = typer.Option(
        L.EVAL_BOOTSTRAP, "--bootstrap", min=1, help="Patient-level bootstrap resamples for the CIs."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap draws."),
    cache: Path | None = typer.Option(None, "--cache", help="Preprocessing cache. Default: the run's (RUN/data.json)."),
    allow_data_mismatch: bool = typer.Option(
        False, "--allow-data-mismatch", help="Evaluate on --data other than the run's on purpose (RUN/thresholds.json "
        "is then left as it was)."),
    which: Checkpoint = checkpoint_option(),
    device: Device = device_option(),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per forward pass."),
    target_sensitivity: float = typer.Option(
        L.EVAL_TARGET_SENSITIVITY, "--target-sensitivity", help="Sensitivity of the 2nd operating point (set on val)."
    ),
    expert: Path | None = typer.Option(
        None, "--expert-labels", help="google2019_nih-chest-xray-labels.csv.gz (default: looked up in the data folder)."
    ),
    data_kind: DataKind = typer.Option(
        "auto", "--data-kind", help="What the data is, for the report's labels (phantom/subset never compared)."
    ),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Draw ROC/PR/reliability/training figures."),
    sections: list[Path] = typer.Option(
        [], "--section", help="Extra report section JSON (Section.to_json, e.g. from `cxrmtl ablate`); repeatable."
    ),
) -> None:
    """Evaluate RUN on a split; write RUN/eval/<split>/{metrics.json,report.md,report.html} and RUN/thresholds.json."""
    from cxrmtl.cli._logging import configure_logging
    from cxrmtl.cli._options import resolve_device_name
    from cxrmtl.eval.evaluate import EvalOptions
    from cxrmtl.report.evaluation import evaluate_run
    from cxrmtl.report.render import load_section

    configure_logging()
    device = resolve_device_name(device)
    extra = [load_section(path) for path in sections]
    options = EvalOptions(n_bootstrap=bootstrap, seed=seed, target_sensitivity=target_sensitivity)
    result = evaluate_run(run, data_root=data, split=split, cache_dir=cache, options=options, which=which,
                          device=device, batch_size=batch_size, expert_labels=expert, data_kind=data_kind,
                          sections=extra, figures=figures, allow_data_mismatch=allow_data_mismatch)
    mean = result.evaluation.metrics["findings"].get("auroc_mean") or {}
    if mean.get("value") is not None:
        low, high = mean.get("low"), mean.get("high")
        ci = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        typer.echo(f"mean AUROC ({split}): {mean['value']:.3f}{ci}")
    typer.echo(f"metrics: {result.metrics_path}")
    typer.echo(f"report:  {result.report_html}")
    if result.thresholds_path is not None:
        typer.echo(f"thresholds: {result.thresholds_path}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
