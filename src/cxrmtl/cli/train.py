"""``cxrmtl train CONFIG --data ROOT --out RUN``: train one shared network for the tasks of a config.

``--resume`` continues RUN (its data from RUN/data.json; another --data is refused by the index fingerprint).

Also started by torchrun, unchanged: ``torchrun --nproc-per-node N -m cxrmtl train CONFIG --data ROOT --out RUN``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cxrmtl.cli._options import Device, device_option, progress_option

ORDER = 40


def train_command(
    config: Path = typer.Argument(..., help="YAML config (see configs/ and docs/training.md)."),
    data: Path | None = typer.Option(
        None, "--data", help="NIH-layout folder (real or phantom); with --resume: default RUN/data.json."),
    out: Path = typer.Option(..., "--out", help="Run folder to create (or continue with --resume)."),
    cache: Path | None = typer.Option(
        None, "--cache", help="Preprocessing cache folder (built on first use). Default: RUN/../.cxrmtl-cache/..."
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Stop after N optimizer steps."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from checkpoints/last.pt (from step 0 if it has none)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config field: dotted.key=value (repeatable)."),
    device: Device = device_option(),
    progress: bool | None = progress_option(None, what="the training progress bar"),
) -> None:
    """Train one shared network for all tasks of CONFIG on ROOT into RUN."""
    from cxrmtl.cli._logging import configure_logging
    from cxrmtl.cli._options import resolve_device_name
    from cxrmtl.config import load_config
    from cxrmtl.fsio import ensure_writable_dir

    configure_logging()
    # Cheap checks first (config, output folder, device), so a mistake costs no data loading and no model build.
    extra = [f"train.max_steps={max_steps}"] if max_steps else []
    extra += [f"train.progress={str(progress).lower()}"] if progress is not None else []
    cfg = load_config(config, [*overrides, *extra])
    ensure_writable_dir(out, "--out")
    device = resolve_device_name(device)
    from cxrmtl.train.loop import format_summary, train

    summary = train(cfg, data_root=data, out=out, cache_dir=cache, resume=resume, device=device)
    if _is_main() and not summary.already_finished:
        typer.echo(format_summary(summary))
        typer.echo(f"run: {summary.run}")


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") in ("", "0")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
