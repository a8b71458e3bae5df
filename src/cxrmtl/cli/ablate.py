"""``cxrmtl ablate CONFIG --out DIR``: multitask vs findings-only vs single-task (and loss weightings), same budget.

Without ``--data`` the built-in phantom is written to DIR/phantom first (reused when it is already complete).
Running the command again skips every (variant, seed) that finished and resumes an interrupted one.
``--rare-fraction F`` trains every variant on reduced labels: F of the training positives of the rare findings kept,
the rest masked (docs/ablation.md, "Data efficiency").
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from cxrmtl import labels
from cxrmtl.cli._options import ALL, Device, EvalSplit, device_option

ORDER = 58  # after localize (55); predict takes 60
WEIGHTING_CHOICES: tuple[str, ...] = (*labels.ABLATION_WEIGHTINGS, ALL)
Single = Literal[labels.ABLATION_SINGLE_MODES]  # type: ignore[valid-type]


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


def _rare_fraction(value: float | None) -> float | None:
    if value is not None and not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"{value:g} is not in (0, 1]: the fraction of positive labels kept",
                                 param_hint="'--rare-fraction'")
    return value


def _shard(text: str | None) -> tuple[int, int] | None:
    """``K/N`` -> (K, N) with 1 <= K <= N."""
    if text is None:
        return None
    k, sep, n = text.partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit() and 1 <= int(k) <= int(n)):
        raise typer.BadParameter(f"{text!r} is not K/N with 1 <= K <= N (e.g. 1/2)", param_hint="'--shard'")
    return int(k), int(n)


def _finding_list(text: str | None, option: str) -> tuple[str, ...] | None:
    """A comma list of finding names, each known and none twice; None when the option was not given."""
    if text is None:
        return None
    names = tuple(_split_list([text]))
    unknown = [n for n in names if n not in labels.FINDING_INDEX]
    if unknown or not names:
        raise typer.BadParameter(f"unknown finding(s) {', '.join(map(repr, unknown)) or '(none given)'}; findings "
                                 f"are {', '.join(labels.FINDINGS)}", param_hint=f"'{option}'")
    if len(set(names)) != len(names):
        raise typer.BadParameter(f"{text!r} names a finding twice", param_hint=f"'{option}'")
    return names


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
    rare_fraction: float | None = typer.Option(
        None, "--rare-fraction", help="Keep this fraction (0 < F <= 1) of the training split's positive labels of the "
        "rare findings, the rest masked (data efficiency). Default: the config's (every label)."),
    rare_findings: str | None = typer.Option(
        None, "--rare-findings",
        help=f"Findings whose positives --rare-fraction cuts (comma list; default {','.join(labels.RARE_FINDINGS)})."),
    single: Single | None = typer.Option(
        None, "--single", help="Single-task models for all findings, only the rare (cut) ones, or none. Default: rare "
        "when labels are cut, else all."),
    cache: Path | None = typer.Option(None, "--cache", help="Preprocessing cache, shareable between ablations "
                                      "on the same data and size (default OUT/cache)."),
    shard: str | None = typer.Option(
        None, "--shard", metavar="K/N", help="Train only every N-th run from the K-th and compare nothing (N processes "
        "share one --out); then run the command without --shard to compare."),
) -> None:
    """Train the multitask model, findings-only and single-task models (and weightings) and compare them."""
    from cxrmtl.ablate.ablation import AblationOptions, plan_ablation, run_ablation
    from cxrmtl.cli._logging import configure_logging
    from cxrmtl.cli._options import resolve_device_name
    from cxrmtl.config import load_config
    from cxrmtl.fsio import ensure_writable_dir

    configure_logging()
    methods = _weightings(weightings)
    fraction = _rare_fraction(rare_fraction)
    cut_findings = _finding_list(rare_findings, "--rare-findings")
    chosen = _finding_list(findings, "--findings")
    part = _shard(shard)
    cfg = load_config(config, overrides)
    if cut_findings is not None and (fraction if fraction is not None else cfg.data.rare_positive_fraction) >= 1:
        raise typer.BadParameter("cuts nothing without --rare-fraction below 1", param_hint="'--rare-findings'")
    device = resolve_device_name(device)
    ensure_writable_dir(out, "--out")
    root = data if data is not None else out / "phantom"
    options = AblationOptions(data_root=root, out=out, seeds=seeds, max_steps=max_steps, weightings=tuple(methods),
                              findings=chosen, split=split, n_resamples=bootstrap, device=device,
                              phantom=data is None, rare_fraction=fraction, rare_findings=cut_findings,
                              single=single, cache=cache, shard=part)
    plan_ablation(cfg, options)  # every option mistake fails here, before a phantom is written
    if data is None:
        _phantom(root, patients=phantom_patients, seed=cfg.seed, size=cfg.data.image_size)
    if run_ablation(cfg, options, log=typer.echo) is None:
        typer.echo(f"shard {shard} done; when every shard is, run the command without --shard to compare")
        return
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
