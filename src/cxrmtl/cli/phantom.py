"""``cxrmtl phantom OUT``: write the built-in synthetic chest X-ray dataset in the exact NIH layout."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from cxrmtl.cli._options import Prevalence, progress_option
from cxrmtl.labels import (
    NIH_IMAGE_SIZE,
    PHANTOM_BOX_SHARE,
    PHANTOM_DEFAULT_DIFFICULTY,
    PHANTOM_DEFAULT_LABEL_NOISE,
    PHANTOM_DEFAULT_PATIENTS,
)

ORDER = 18  # after demo (10) and download (15)


def phantom(
    out: Path = typer.Argument(..., help="Empty or new folder to write the NIH-layout phantom into."),
    patients: int = typer.Option(
        PHANTOM_DEFAULT_PATIENTS, "--patients", help="Number of patients (about 3.6 images each, like NIH)."
    ),
    size: int = typer.Option(NIH_IMAGE_SIZE, "--size", help="Image side in pixels (NIH: 1024)."),
    seed: int = typer.Option(0, "--seed", help="Seed; the output is identical for a seed whatever --workers is."),
    difficulty: float = typer.Option(
        PHANTOM_DEFAULT_DIFFICULTY, "--difficulty", help="Lesion subtlety in [0, 1): 0 obvious, near 1 invisible."
    ),
    label_noise: float = typer.Option(
        PHANTOM_DEFAULT_LABEL_NOISE, "--label-noise", help="Share of positive labels flipped, like text-mined labels."
    ),
    prevalence: Prevalence = typer.Option(
        "boosted", "--prevalence", help="real: NIH prevalence; boosted: every finding >= 5 %."
    ),
    box_share: float = typer.Option(
        PHANTOM_BOX_SHARE, "--box-share", help="Share of images with boxed findings that get BBox_List rows."
    ),
    workers: int = typer.Option(min(8, os.cpu_count() or 1), "--workers", min=1, help="Rendering processes."),
    progress: bool = progress_option(),
) -> None:
    """Write Data_Entry_2017.csv, images_0XX/images/*.png, train_val_list.txt, test_list.txt, BBox_List_2017.csv."""
    from cxrmtl.fsio import ensure_writable_dir
    from cxrmtl.phantom.generate import write_phantom

    ensure_writable_dir(out, "phantom OUT")
    report = write_phantom(
        out, patients=patients, size=size, seed=seed, difficulty=difficulty, label_noise=label_noise,
        prevalence=prevalence, box_share=box_share, workers=workers, progress=progress,
    )  # fmt: skip
    typer.echo(
        f"wrote {report.images} images of {report.patients} patients ({report.test_images} test), "
        f"{report.boxes} boxes to {report.root}"
    )


def register(app: typer.Typer) -> None:
    """Add the ``phantom`` command to the top-level app."""
    app.command("phantom")(phantom)
