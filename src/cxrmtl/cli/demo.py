"""``cxrmtl demo``: the main job on the built-in phantom (what ``make demo`` runs)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from cxrmtl.cli._options import Device, device_option, progress_option

ORDER = 10


def demo_command(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for data/, cache/ and run/ (reused on rerun)."),
    quick: bool = typer.Option(False, "--quick", help="Tiny phantom, few steps: a < 3 minute smoke check."),
    workers: int = typer.Option(
        max(1, len(os.sched_getaffinity(0))), "--workers", min=1, help="Processes for phantom and cache."
    ),
    device: Device = device_option(),
    progress: bool = progress_option(what="progress bars (phantom, cache, training)"),
) -> None:
    """Phantom -> cache -> multitask training -> evaluation -> report, ending with the summary and report path."""
    from cxrmtl.cli._logging import configure_logging
    from cxrmtl.cli._options import resolve_device_name
    from cxrmtl.demo import run_demo
    from cxrmtl.fsio import ensure_writable_dir

    configure_logging()
    device = resolve_device_name(device)
    ensure_writable_dir(out, "--out")
    run_demo(out=out, quick=quick, workers=workers, device=device, progress=progress, log=typer.echo)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
