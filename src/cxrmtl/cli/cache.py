"""``cxrmtl cache build ROOT OUT --size S [--workers N]`` and ``cxrmtl cache verify OUT`` (docs/cache.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrmtl.cli._options import progress_option

ORDER = 30
SHOWN_FAILURES = 20  # unreadable images listed on the terminal; manifest.json holds them all

cache_app = typer.Typer(help="Build and verify the uint8 preprocessing cache.", no_args_is_help=True)


@cache_app.command("build")
def build(
    root: Path = typer.Argument(..., help="NIH-layout folder (Data_Entry csv, split lists, images)."),
    out: Path = typer.Argument(..., help="Cache folder to create or resume."),
    size: int = typer.Option(..., "--size", min=1, help="Side S of the S x S cached images."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Decoder processes (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Discard an incompatible or partial cache in OUT."),
    chunk: int | None = typer.Option(None, "--chunk", min=1, help="Images per journal chunk (resume granularity)."),
    sync_every: float | None = typer.Option(
        None, "--sync-every", min=0, help="Seconds between fsync + journal commits."),
    progress: bool = progress_option(),
) -> None:
    """Decode every image of ROOT once into OUT; a killed build resumes, a finished one is a no-op."""
    from cxrmtl.data.cache import build_cache
    from cxrmtl.data.nih import load_index
    from cxrmtl.fsio import ensure_writable_dir
    from cxrmtl.labels import CACHE_SYNC_SECONDS

    ensure_writable_dir(out, "cache OUT")
    index = load_index(root)
    sync = CACHE_SYNC_SECONDS if sync_every is None else sync_every
    report = build_cache(index, out, size=size, workers=workers, progress=progress, force=force, chunk_size=chunk,
                         sync_seconds=sync)
    if report.skipped:
        typer.echo(f"{out}: already built ({report.count} images at {report.size}x{report.size}); nothing to do")
    else:
        resumed = f", resumed after {report.resumed}" if report.resumed else ""
        typer.echo(f"{out}: {report.count} images at {report.size}x{report.size} in {report.seconds:.1f} s "
                   f"({report.images_per_second:.1f} images/s{resumed})")
    typer.echo(f"ok {report.ok}, unreadable {len(report.failed)}, indexed but missing on disk {report.missing}")
    for name, reason in list(report.failed.items())[:SHOWN_FAILURES]:
        typer.echo(f"  unreadable {name}: {reason}", err=True)
    if len(report.failed) > SHOWN_FAILURES:
        typer.echo(f"  ... {len(report.failed) - SHOWN_FAILURES} more in {out / 'manifest.json'}", err=True)


@cache_app.command("verify")
def verify(
    out: Path = typer.Argument(..., help="Cache folder to check."),
    progress: bool = progress_option(),
) -> None:
    """Re-hash every cached image and compare with manifest.json; exits non-zero on any mismatch."""
    from tqdm import tqdm

    from cxrmtl.data.cache import IMAGES_FILE, open_cache, verify_cache
    from cxrmtl.errors import CacheError

    with tqdm(total=len(open_cache(out)), unit="img", desc="verify", disable=not progress) as bar:
        report = verify_cache(out, on_progress=bar.update)
    for row, name in report.mismatched[:SHOWN_FAILURES]:
        typer.echo(f"  mismatch row {row} ({name})", err=True)
    if not report.ok:
        raise CacheError(f"{out / IMAGES_FILE}: {len(report.mismatched)} of {report.count} rows do not match "
                         "their checksums in manifest.json; rebuild with cxrmtl cache build --force")
    typer.echo(f"{out}: all {report.count} rows match their checksums")


def register(app: typer.Typer) -> None:
    """Add the ``cache`` command group."""
    app.add_typer(cache_app, name="cache")
