"""``cxrmtl predict RUN PATH...``: every task's output for new images (files or folders), as a table, JSON or CSV.

Exit status: 0 when every file was predicted, 1 when some could not be read (their entries carry the error, the
output is still complete), 2 for usage errors (bad options, a PATH that does not exist, no image found, a broken
run folder). Schema and examples: docs/predict.md.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import typer

ORDER = 60
# File names a folder walk takes even when their content is not recognised (they then get an error entry);
# other files are taken only when their first bytes are a PNG, JPEG or DICOM signature.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
FORMATS = ("table", "json", "csv")
log = logging.getLogger(__name__)


def _looks_like_image(path: Path) -> bool:
    from cxrmtl.data.imageio import DICOM_PREAMBLE, detect_format
    from cxrmtl.errors import ImageReadError

    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(DICOM_PREAMBLE + 4)
        detect_format(path, head)
    except (OSError, ImageReadError):
        return False
    return True


def collect_paths(paths: Sequence[Path]) -> list[Path]:
    """Files as given; folders walked recursively (sorted, hidden entries skipped) keeping image files."""
    from cxrmtl.errors import ConfigError

    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*")) if p.is_file()
                     and not any(part.startswith(".") for part in p.relative_to(path).parts) and _looks_like_image(p)]
            if not found:
                log.warning("%s: no PNG, JPEG or DICOM file in this folder", path)
            out += found
        elif path.exists():
            out.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder")
    if not out:
        raise ConfigError("PATH: no image file found in " + ", ".join(str(p) for p in paths))
    return out


def _with_urgency(result: dict[str, Any], operating: Any) -> dict[str, Any]:
    """Add ``result["urgency"] = {"score", "level", "top_finding"}``: the worklist's rule (triage.score_result)."""
    from cxrmtl.triage.urgency import score_result

    urgency = score_result(result, operating)
    return {**result, "urgency": {"score": urgency.score, "level": urgency.level, "top_finding": urgency.top_finding}}


def _entries(results: Iterable[Any], heatmaps: Path | None, predictor: Any) -> Iterator[dict[str, Any]]:
    """One output object per file: path + result (+ urgency), or path + error; writes heatmaps on the way."""
    stems: dict[str, int] = {}
    for item in results:
        if item.result is None:
            yield {"path": str(item.path), "error": item.error}
            continue
        entry = {"path": str(item.path), **_with_urgency(item.result, predictor.operating)}
        if heatmaps is not None:
            entry["heatmaps"] = [str(p) for p in _heatmaps(predictor, item, heatmaps, stems)]
        yield entry


def _heatmaps(predictor: Any, item: Any, out_dir: Path, stems: dict[str, int]) -> list[Path]:
    from cxrmtl.infer.engine import decode_file
    from cxrmtl.localize.overlay import positive_findings, write_positive_overlays

    if not positive_findings(item.result):
        return []
    stem = item.path.stem
    stems[stem] = stems.get(stem, 0) + 1
    if stems[stem] > 1:  # the same file name in two folders
        stem = f"{stem}-{stems[stem]}"
    image = decode_file(item.path, size=predictor.image_size)
    return write_positive_overlays(predictor, image, item.result, out_dir, stem=stem)


# ------------------------------------------------------------------------------------------------------ writers
def _write_json(entries: Iterable[dict[str, Any]]) -> None:
    """One JSON list on stdout, streamed object by object."""
    out = sys.stdout
    out.write("[")
    for i, entry in enumerate(entries):
        out.write(("," if i else "") + "\n  " + json.dumps(entry, allow_nan=False))
        out.flush()
    out.write("\n]\n")


def _csv_row(entry: dict[str, Any]) -> dict[str, Any]:
    from cxrmtl.infer.results import flat_columns

    row: dict[str, Any] = {"path": entry["path"], "error": entry.get("error")}
    if "error" in entry:
        return row
    row.update(flat_columns(entry))
    urgency = entry.get("urgency")
    if urgency is not None:
        row.update({f"urgency_{k}": v for k, v in urgency.items()})
    if "heatmaps" in entry:
        row["heatmaps"] = ";".join(entry["heatmaps"])
    return row


def _write_csv(entries: Iterable[dict[str, Any]]) -> None:
    """One CSV row per file (the header needs the first predicted file: failures before it are held back)."""
    from cxrmtl.infer.tables import rows_to_csv

    sys.stdout.write(rows_to_csv([_csv_row(e) for e in entries]))


def _table_line(entry: dict[str, Any]) -> str:
    if "error" in entry:
        return f"{entry['path']}\n    error: {entry['error']}"
    parts = []
    findings = entry.get("findings", {})
    positive = [n for n, p in findings.items() if p["positive"]]
    top = sorted(findings.items(), key=lambda kv: -kv[1]["probability"])[:3]
    if findings:
        called = ", ".join(positive) if positive else ("none" if entry["threshold_method"] else "n/a (no thresholds)")
        parts.append(f"positive: {called}")
        parts.append("top: " + ", ".join(f"{n} {p['probability']:.2f}" for n, p in top))
    if "abnormal" in entry:
        parts.append(f"abnormal {entry['abnormal']['probability']:.2f}")
    if "age_years" in entry:
        parts.append(f"age {entry['age_years']:.0f} y")
    if "sex" in entry:
        parts.append(f"P(female) {entry['sex']['p_female']:.2f}")
    if "view" in entry:
        parts.append(f"P(AP) {entry['view']['p_ap']:.2f}")
    if "urgency" in entry:
        parts.append(f"urgency {entry['urgency']['level']} ({entry['urgency']['score']:.2f})")
    return f"{entry['path']}\n    " + "; ".join(parts)


def _write_table(entries: Iterable[dict[str, Any]], predictor: Any) -> None:
    calibrated = "calibrated on val" if predictor.calibrated else "not calibrated"
    method = predictor.operating.default if predictor.operating is not None else None
    thresholds = f"{method} thresholds from val" if method else "no thresholds (run `cxrmtl evaluate` first)"
    typer.echo(f"# model {predictor.run} (trained on: {predictor.data_kind.upper()}; backend {predictor.backend}; "
               f"probabilities {calibrated}; {thresholds})")
    for entry in entries:
        typer.echo(_table_line(entry))


def predict_command(
    run: Path = typer.Argument(..., help="Run folder made by `cxrmtl train` (evaluated: thresholds, temperatures)."),
    paths: list[Path] = typer.Argument(..., help="Image files (PNG, JPEG, DICOM) or folders, searched recursively."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list (one object per file)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV, one row per file."),
    heatmaps: Path | None = typer.Option(None, "--heatmaps", help="Write a Grad-CAM overlay PNG per positive finding."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per forward pass."),
    backend: str = typer.Option("auto", "--backend", help="auto, torch or onnx (auto: see docs/predict.md)."),
    workers: int = typer.Option(2, "--workers", help="Decoding threads (overlapped with inference)."),
    which: str = typer.Option("best", "--checkpoint", help="Checkpoint: best or last."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
) -> None:
    """Predict every task for each image; unreadable files get an error entry (exit 1), the rest are predicted."""
    from cxrmtl.errors import ConfigError

    # Cheap checks first: a mistyped command fails before torch is imported.
    if as_json and as_csv:
        raise ConfigError("--json and --csv: choose one output format")
    for option, value in (("--batch-size", batch_size), ("--workers", workers)):
        if value < 1:
            raise ConfigError(f"{option}: must be at least 1, got {value}")
    files = collect_paths(paths)
    from cxrmtl.infer.engine import BACKENDS, Predictor

    if backend not in BACKENDS:
        raise ConfigError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    predictor = Predictor.from_run(run, backend=backend, device=device, which=which)
    if heatmaps is not None and predictor.operating is None:
        log.warning("--heatmaps: the run has no thresholds, so no finding is positive and no overlay is written")
    failed = 0

    def counted() -> Iterator[dict[str, Any]]:
        nonlocal failed
        for entry in _entries(predictor.predict_files(files, batch_size=batch_size, workers=workers), heatmaps,
                              predictor):
            failed += "error" in entry
            yield entry

    if as_json:
        _write_json(counted())
    elif as_csv:
        _write_csv(counted())
    else:
        _write_table(counted(), predictor)
    if failed:
        typer.echo(f"{failed} of {len(files)} file(s) could not be read", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
