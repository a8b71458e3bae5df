"""``cxrmtl export RUN --onnx FILE``: the run's model as one self-describing ONNX file (docs/export.md)."""

from __future__ import annotations

from pathlib import Path

import typer

ORDER = 62


def export_command(
    run: Path = typer.Argument(..., help="Run folder made by `cxrmtl train` (evaluate it first to embed thresholds)."),
    onnx: Path = typer.Option(..., "--onnx", help="ONNX file to write."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default: the tested one, 17)."),
    which: str = typer.Option("best", "--checkpoint", help="Checkpoint: best or last."),
) -> None:
    """Export every task head as a named output, with a dynamic batch axis and the metadata to use it alone."""
    from cxrmtl.infer.onnx_export import EXPORT_OPSET, export_onnx, read_metadata
    from cxrmtl.runs.checkpoint import load_run

    loaded = load_run(run, which=which, device="cpu")
    path = export_onnx(loaded, onnx, opset=opset or EXPORT_OPSET)
    meta = read_metadata(path)
    outputs = ", ".join(f"{name} ({doc['task']}: {len(doc['columns'])})" for name, doc in meta["outputs"].items())
    typer.echo(f"wrote {path} (opset {meta['exporter']['opset']}, input image [batch, 1, {meta['image_size']}, "
               f"{meta['image_size']}] float32; trained on: {str(meta['data_kind']).upper()})")
    typer.echo(f"outputs: {outputs}")
    if meta["thresholds"] is None:
        typer.echo("note: the run has no thresholds.json yet (run `cxrmtl evaluate`): none embedded", err=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
