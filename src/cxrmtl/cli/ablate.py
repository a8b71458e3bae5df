"""``cxrmtl ablate CONFIG --out DIR``: multitask vs findings-only vs single-task (and loss weightings), same budget.

Without ``--data`` the built-in phantom is written to DIR/phantom first (reused when it is already complete).
Running the command again skips every (variant, seed) that finished and resumes an interrupted one.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cxrmtl import labels
from cxrmtl.cli._options import ALL, Device, EvalSplit, device_option

ORDER = 58  # after localize (55); predict takes 60
WEIGHTING_CHOICES: tuple[str, ...] = (*labels.ABLATION_WEIGHTINGS, ALL)


def _split_list(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _weightings(values: list[str]) -> list[str]:
    """``--weightings`` as a list of method names (comma lists and repeats allowed; ``all`` = every method)."""
    methods = _split_list(values)
    unknown = [m for m in methods if m not in WEIGHTING_CHOICES]
    if unknown:
        raise typer.BadParameter(f"{', '.join(map(repr, unknown))}: not one of {', '.join(WEIGHTING_CHOICES)}",
                                 param_hint="'--weightings'")
    return list(labels.ABLATION_WEIGHTINGS) if ALL in methods else list(dict.fromkeys(methods))


def ablate_command(
    config: Path = typer.Argument(..., help="YAML config of the multitask model (its tasks.specs: findings + aux)."),
    out: Path = typer.Option(..., "--out", help="Output folder: runs/, cache/, ablation.json, ablation.md."),
    data: Path | None = typer.Option(None, "--data", help="NIH-layout folder. Default: a phantom in OUT/phantom."),
    seeds: int = typer.Option(labels.ABLATION_DEFAULT_SEEDS, "--seeds", min=1, help="Seeds per variant."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Optimizer steps per model (budget)."),
    weightings: list[str] = typer.Option(
        [], "--weightings", metavar=f"[{'|'.join(WEIGHTING_CHOICES)}],...",
        help="Also compare these loss weightings (comma list or repeated; all = every one)."),
    findings: str | None = typer.Option(None, "--findings", help="Restrict to these findings (comma list)."),
    split: EvalSplit = typer.Option(
        "test", "--split", help="Split the models are compared on (val is labelled as such; train is never used)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=1, help="Patient-level bootstrap resamples."),
    device: Device = device_option(),
    phantom_patients: int = typer.Option(
        labels.PHANTOM_DEFAULT_PATIENTS, "--phantom-patients", min=1, help="Phantom size when --data is not given."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config field: dotted.key=value (repeatable)."),
) -> None:
    """Train the multitask model, findings-only and single-task models (and weightings) and compare them."""
    from cxrmtl.ablate.ablation import AblationOptions, run_ablation
    from cxrmtl.cli._logging import configure_logging
    from cxrmtl.cli._options import resolve_device_name
    from cxrmtl.config import load_config
    from cxrmtl.fsio import ensure_writable_dir

    configure_logging()
    methods = _weightings(weightings)
    cfg = load_config(config, overrides)
    device = resolve_device_name(device)
    ensure_writable_dir(out, "--out")
    chosen = tuple(_split_list([findings])) if findings else None
    root = data if data is not None else _phantom(out / "phantom", patients=phantom_patients, seed=cfg.seed,
                                                  size=cfg.data.image_size)
    options = AblationOptions(data_root=root, out=out, seeds=seeds, max_steps=max_steps, weightings=tuple(methods),
                              findings=chosen, split=split, n_resamples=bootstrap, device=device,
                              phantom=data is None)
    run_ablation(cfg, options, log=typer.echo)
    typer.echo((out / "ablation.md").read_text(encoding="utf-8"))
    typer.echo(f"written: {out / 'ablation.json'}, {out / 'ablation.md'}, {out / 'ablation_section.json'}")


def _phantom(root: Path, *, patients: int, seed: int, size: int) -> Path:
    """Write the phantom once; a complete one (its Data_Entry file exists, written last) is reused."""
    from cxrmtl.errors import DataLayoutError
    from cxrmtl.phantom.generate import DATA_ENTRY_FILE, write_phantom

    if (root / DATA_ENTRY_FILE).is_file():
        return root
    if root.is_dir() and any(root.iterdir()):
        raise DataLayoutError(f"{root}: an unfinished phantom (no {DATA_ENTRY_FILE}); delete the folder and rerun")
    typer.echo(f"writing a phantom of {patients} patients to {root}")
    write_phantom(root, patients=patients, size=max(size, 32), seed=seed)
    return root


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate_command)
