"""``cxrmtl download DEST``: fetch the NIH ChestX-ray14 release, or adopt a Kaggle copy, into DEST.

User guide: docs/download.md.
"""

from __future__ import annotations

from pathlib import Path

import typer

ORDER = 15


def download(
    dest: Path = typer.Argument(..., help="Folder to fill with the release (created; a rerun resumes and verifies)."),
    only: str = typer.Option("all", "--only", help="all, metadata (the CSVs and split lists) or images (archives)."),
    mirror: str | None = typer.Option(
        None, "--mirror", help="Base URL serving images_001.tar.gz .. images_012.tar.gz and the metadata files."
    ),
    jobs: int = typer.Option(3, "--jobs", help="Archives in flight (downloading or unpacking) at the same time."),
    kaggle: Path | None = typer.Option(
        None, "--kaggle", help="An already-downloaded Kaggle copy (images_0NN/images + CSVs) to use instead."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars per file and overall."),
) -> None:
    """Download, verify (SHA-256 manifest) and unpack the 12 NIH archives and the metadata into DEST."""
    from cxrmtl.data.download import DownloadOptions, adopt_kaggle, download_release, missing_metadata_message
    from cxrmtl.data.release import CITATION
    from cxrmtl.errors import DownloadError

    if kaggle is not None:
        if mirror is not None:
            raise DownloadError("--kaggle and --mirror: give one source, not both")
        report = adopt_kaggle(kaggle, dest)
        _print_kaggle(report)
        return
    report = download_release(dest, DownloadOptions(only=only, mirror=mirror, jobs=jobs, progress=progress))
    if report.downloaded or report.extracted or report.skipped:
        _print_report(report)
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    if report.missing_metadata:
        raise DownloadError(missing_metadata_message(report.missing_metadata, dest))
    typer.echo(f"next: cxrmtl data check {dest}")
    typer.echo(f"cite: {CITATION}")


def _print_report(report: object) -> None:
    moved = f"{report.bytes_transferred / 1e9:.2f} GB" if report.bytes_transferred >= 1e8 else \
        f"{report.bytes_transferred / 1e6:.1f} MB"
    parts = [f"{len(report.downloaded)} downloaded ({moved})"]
    if report.resumed:
        parts.append(f"{len(report.resumed)} resumed")
    if report.refetched:
        parts.append(f"{len(report.refetched)} fetched again")
    parts += [f"{len(report.extracted)} unpacked", f"{len(report.skipped)} already complete and verified"]
    typer.echo(f"{report.dest}: {', '.join(parts)} in {report.seconds:.1f} s")
    if report.images:
        typer.echo(f"{report.images:,} images in {report.dest / 'images'}; "
                   f"manifest {report.dest / 'download_manifest.json'}")


def _print_kaggle(report: object) -> None:
    if report.verified_only:
        typer.echo(f"{report.source}: Kaggle copy checked in place (nothing written)")
    else:
        typer.echo(f"{report.dest}: Kaggle copy {report.source}: {len(report.linked)} image folders linked, "
                   f"{len(report.copied)} metadata files copied")
    split = "the official split" if report.official_split else "NOT the official split (md5 differs)"
    typer.echo(f"load_index: {report.rows:,} images listed, {report.found:,} found, "
               f"{report.rows - report.found:,} missing; split lists: {split}")
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"next: cxrmtl data check {report.dest}")


def register(app: typer.Typer) -> None:
    """Add the ``download`` command to the top-level app."""
    app.command("download")(download)
