"""``cxrmtl localize RUN``: Grad-CAM localisation scored against the bounding boxes, plus a gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from cxrmtl import labels
from cxrmtl.cli._options import Checkpoint, Device, Split, checkpoint_option, device_option

CamMethod = Literal[labels.LOC_CAM_METHODS]  # type: ignore[valid-type]  # == cxrmtl.localize.cam.CAM_METHODS
BoxRuleName = Literal[labels.LOC_BOX_RULES]  # type: ignore[valid-type]  # == localize.localization.BOX_RULES

ORDER = 55


def localize_command(
    run: Path = typer.Argument(..., help="Run folder made by `cxrmtl train`."),
    data: Path | None = typer.Option(
        None, "--data", help="NIH-layout folder with BBox_List_2017.csv. Default: the run's (RUN/data.json)."),
    split: Split = typer.Option("test", "--split", help="Split whose boxed images are localised."),
    out: Path | None = typer.Option(None, "--out", help="Output folder. Default: RUN/eval/<split>/localization."),
    cache: Path | None = typer.Option(None, "--cache", help="Preprocessing cache. Default: the run's (RUN/data.json)."),
    allow_data_mismatch: bool = typer.Option(
        False, "--allow-data-mismatch", help="Localise on --data other than the run's on purpose."),
    which: Checkpoint = checkpoint_option(),
    layer: str | None = typer.Option(
        None, "--layer", help="Module(s) to take the CAM from, A or A+B (default: the two deepest stages with >= 8 "
                              "cells a side, averaged; docs/localization.md)."),
    cam: CamMethod = typer.Option(labels.LOC_DEFAULT_CAM, "--cam",
                                  help="Heatmap method: gradcam, gradcam++ or hirescam (docs/localization.md)."),
    box_rule: BoxRuleName = typer.Option(
        labels.LOC_DEFAULT_BOX_RULE, "--box-rule",
        help="Heatmap -> boxes: peak (strongest regions) or wang (Wang et al. 2017, for the protocol number)."),
    gallery: int = typer.Option(8, "--gallery", min=0, help="Overlay PNGs per kind (hit, false positive, miss)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per Grad-CAM pass."),
    device: Device = device_option(),
) -> None:
    """Localise every boxed finding of a split with a CAM; write localization.{json,md}, gallery/ and a section."""
    from cxrmtl.cli._logging import configure_logging
    from cxrmtl.cli._options import resolve_device_name
    from cxrmtl.infer.predictor import load_run
    from cxrmtl.localize.run import localize_run, write_outputs
    from cxrmtl.runs.data import open_run_data

    configure_logging()
    device = resolve_device_name(device)
    loaded = load_run(run, which=which, device=device)
    rd = open_run_data(run, data=loaded.config.data, data_root=data, cache_dir=cache,
                       allow_data_mismatch=allow_data_mismatch)
    out = out or run / "eval" / split / "localization"
    result = localize_run(loaded, rd.cache, rd.index, split=split, batch_size=batch_size, layer=layer, cam=cam,
                          rule=box_rule, gallery_dir=out / "gallery" if gallery else None, gallery_per_kind=gallery)
    paths = write_outputs(result, out)
    typer.echo(paths["markdown"].read_text(encoding="utf-8"))
    typer.echo(f"written: {paths['json']}, {paths['markdown']}, {paths['section']}")


def register(app: typer.Typer) -> None:
    app.command("localize")(localize_command)
