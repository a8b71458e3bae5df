"""``cxrmtl data check ROOT``: counts, prevalence, missing and unreadable images of an NIH-layout folder."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrmtl import labels

ORDER = 20

data_app = typer.Typer(help="Inspect NIH-layout data folders.", no_args_is_help=True)


@data_app.command("check")
def check(
    root: Path = typer.Argument(
        ..., help="NIH-layout folder (Data_Entry csv, split lists, images/ or images_*/images)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    metadata_only: bool = typer.Option(False, "--metadata-only", help="Skip looking for and checking image files."),
    decode: bool = typer.Option(
        False, "--decode", help="Fully decode every image (slow) instead of checking its header and end marker."
    ),
    workers: int = typer.Option(4, "--workers", min=1, help="Threads used to check images."),
    examples: int = typer.Option(20, "--examples", min=0, help="How many names each truncated list shows."),
    val_fraction: float = typer.Option(
        labels.DEFAULT_VAL_FRACTION, "--val-fraction", help="Fraction of train_val patients put in val."
    ),
    split_seed: int = typer.Option(labels.DEFAULT_SPLIT_SEED, "--split-seed", help="Seed of the validation split."),
) -> None:
    """Report counts per split, per-finding prevalence, missing and unreadable images.

    Exits 0 when the layout is usable (missing or unreadable images are listed, not fatal) and 2 with a one-line
    error when it is broken (no metadata, a patient in two splits, malformed CSV, not one listed image on disk, ...).
    """
    import json

    from cxrmtl.data.check import check_data, format_report
    from cxrmtl.errors import DataLayoutError

    report = check_data(
        root,
        metadata_only=metadata_only,
        decode=decode,
        workers=workers,
        examples=examples,
        val_fraction=val_fraction,
        split_seed=split_seed,
    )
    typer.echo(json.dumps(report, indent=2) if json_output else format_report(report))
    if report["layout_errors"]:
        raise DataLayoutError("; ".join(report["layout_errors"]))


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the top-level app."""
    app.add_typer(data_app, name="data")
