"""MODEL_CARD.md: what an evaluated run is, what it is for, how well it did and where it is known to fail.

Written by ``evaluate_run`` next to the report (``RUN/eval/<split>/MODEL_CARD.md``), from what evaluation already
has: the metrics document (schema in docs/evaluation.md) and the run's resolved config (``RUN/config.yaml``). The
sections follow Mitchell et al., "Model Cards for Model Reporting", FAT* 2019: intended use, data, results
(per finding with CIs, calibration, subgroups), limitations, and how to reproduce the numbers. A card for phantom
data starts with a banner saying so, as the report does; every number carries the data and split it came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrmtl import labels
from cxrmtl.fsio import atomic_write_text
from cxrmtl.report.render import banners, data_label, markdown_table

MODEL_CARD_FILE = "MODEL_CARD.md"

# Known limitations of models trained on ChestX-ray14, each with its primary source.
LIMITATIONS: tuple[tuple[str, str], ...] = (
    (
        "Label noise",
        "The 14 labels were text-mined from radiology reports (NIH: expected accuracy > 90 %). A radiologist's review "
        "of a sample found the labels' positive predictive value 10-30 % lower than reported for several findings, "
        "and that some labels do not match the image (Oakden-Rayner L., \"Exploring large-scale public medical image "
        "datasets\", Academic Radiology 27(1):106-112, 2020). Test labels share this noise, so AUROC measures "
        "agreement with the report miner as much as with disease.",
    ),
    (
        "Hidden stratification",
        "A high average AUROC can hide poor performance on clinically important subsets (e.g. pneumothorax without a "
        "chest drain, which the model may use as a shortcut), invisible in per-finding metrics "
        "(Oakden-Rayner L., Dunnmon J., Carneiro G., Ré C., \"Hidden stratification causes clinically meaningful "
        "failures in machine learning for medical imaging\", ACM CHIL 2020). The subgroup table covers sex, age and "
        "view only.",
    ),
    (
        "AP/PA view shift",
        "AP films are taken of sicker, often supine or bedside patients; findings, devices and image appearance "
        "differ from PA films, and a model can learn the view instead of the disease. Performance on a population "
        "with another AP/PA mix (intensive care, emergency) can differ from the numbers above; see the view "
        "subgroups.",
    ),
    (
        "One hospital, one period",
        "ChestX-ray14 comes from the NIH Clinical Center (Wang et al., CVPR 2017). Other scanners, populations and "
        "reporting habits were not evaluated; external validation is needed before any clinical use.",
    ),
)

INTENDED_USE = (
    "Research on multitask learning for chest X-rays, and as a second reader in research-grade decision support "
    "(for example ordering a worklist so that likely urgent studies are read first). It is **not a diagnosis**: "
    "every output must be reviewed by a qualified reader, it was not cleared by any regulator, and it must not be "
    "used to rule a finding out."
)


def write_model_card(
    run: Path,
    metrics: Mapping[str, Any],
    *,
    out: Path,
    config: object | None = None,
    data_description: str | None = None,
) -> Path:
    """Write the model card of ``run`` for the evaluation ``metrics`` to ``out`` (atomically); return the path.

    ``config`` is the run's resolved Config (read from ``RUN/config.yaml`` when None); ``data_description`` is an
    optional sentence about the data added under "Data and split".
    """
    if config is None:
        from cxrmtl.runs.checkpoint import read_run_config

        config = read_run_config(run)
    return atomic_write_text(out, model_card_markdown(run, metrics, config=config, data_description=data_description))


def model_card_markdown(
    run: Path, metrics: Mapping[str, Any], *, config: object, data_description: str | None = None
) -> str:
    """The card as Markdown (see ``write_model_card``)."""
    run = Path(run)
    parts = [f"# Model card: {run.name}\n"]
    parts += [f"> **{text}**\n" for _, text in banners(metrics)]
    parts.append(_model(run, metrics, config))
    parts.append(f"## Intended use\n\n{INTENDED_USE}\n")
    parts.append(_data(metrics, config, data_description))
    for section in (_findings(metrics), _calibration(metrics), _auxiliary(metrics), _subgroups(metrics)):
        if section:
            parts.append(section)
    parts.append(_limitations(metrics))
    parts.append(_reproduce(run, metrics, config))
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------ sections
def _ci(interval: Mapping[str, Any] | None) -> str:
    """``0.812 [0.801, 0.823]`` from a metrics.json interval; n/a when undefined."""
    if not interval or interval.get("value") is None:
        return "n/a"
    low, high = interval.get("low"), interval.get("high")
    return f"{interval['value']:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")


def _ci_row(row: Mapping[str, Any]) -> str:
    return _ci({"value": row.get("auroc"), "low": row.get("low"), "high": row.get("high")})


def _model(run: Path, metrics: Mapping[str, Any], config: Any) -> str:
    m, t = config.model, config.tasks
    init = {True: "timm ImageNet weights", False: "random init"}.get(m.pretrained, f"weights file {m.pretrained}")
    rows = [
        ["backbone", f"{m.backbone} (timm), 1 input channel, {init}"],
        ["tasks (one shared network)", ", ".join(t.specs)],
        ["loss / task weighting", f"{t.loss} / {config.weighting.method}"],
        ["input", f"{config.data.image_size} x {config.data.image_size} px, gray, centre square crop"],
        ["checkpoint", f"{metrics.get('checkpoint')} (epoch {metrics.get('epoch')}, step {metrics.get('step')})"],
        ["code version", str(metrics.get("code_version"))],
        ["evaluated", str(metrics.get("created"))],
    ]
    return "## Model\n\n" + markdown_table(["", ""], rows) + "\n"


def _data(metrics: Mapping[str, Any], config: Any, description: str | None) -> str:
    data = metrics.get("data", {}) or {}
    kind = data.get("kind")
    what = {
        "nih": "the complete NIH ChestX-ray14 release (Wang et al., CVPR 2017; NIH Clinical Center)",
        "phantom": "the built-in PHANTOM: synthetic images in the NIH layout; its numbers say nothing about real "
                   "X-rays",
        "subset": "an NIH-layout folder that is not the complete release (a subset or another dataset): its numbers "
                  "are not comparable with published ones",
    }.get(str(kind), "unknown data")
    d = config.data
    lines = [
        f"- **Data**: {what}; folder `{data.get('root')}`, {data.get('n_index_images')} images indexed.",
        f"- **Evaluated split**: {data_label(metrics)}: {metrics.get('n_images')} images of "
        f"{metrics.get('n_patients')} patients.",
        f"- **Training / validation**: the official `train_val` list, split by patient into train and val "
        f"({d.val_fraction:.0%} of its patients to val, seed {d.split_seed}); the test list was never used for "
        "training or for choosing anything.",
        f"- **Thresholds and temperatures**: chosen on the {metrics.get('thresholds_from') or 'n/a'} split only.",
        f"- **Confidence intervals**: {_bootstrap(metrics)}.",
    ]
    if description:
        lines.append(f"- {description}")
    return "## Data and split\n\n" + "\n".join(lines) + "\n"


def _bootstrap(metrics: Mapping[str, Any]) -> str:
    b = metrics.get("bootstrap", {}) or {}
    level = b.get("level")
    level_text = f"{level:.0%}" if isinstance(level, int | float) else "?"
    return f"{level_text}, {b.get('n_resamples')} bootstrap resamples of {b.get('unit', 'patient')}s"


def _findings(metrics: Mapping[str, Any]) -> str:
    rows = []
    for task in (metrics.get("tasks", {}) or {}).values():
        if task.get("kind") not in ("multilabel", "binary"):
            continue
        for name, out in (task.get("outputs", {}) or {}).items():
            if name in labels.FINDING_INDEX:
                rows.append([name, out.get("n_pos"), out.get("prevalence"), _ci(out.get("auroc")),
                             _ci(out.get("auprc")), _operating(out)])
    if not rows:
        return ""
    rows.sort(key=lambda r: labels.FINDING_INDEX[r[0]])
    findings = metrics.get("findings", {}) or {}
    mean = _ci(findings.get("auroc_mean"))
    headers = ["finding", "positives", "prevalence", "AUROC [95% CI]", "AUPRC [95% CI]",
               "sensitivity / specificity (Youden, val threshold)"]
    return (f"## Results per finding\n\n{data_label(metrics)}. Mean AUROC {mean}.\n\n"
            + markdown_table(headers, rows) + "\n")


def _operating(out: Mapping[str, Any]) -> str:
    op = (out.get("operating_points") or {}).get("youden")
    if not op or op.get("sensitivity") is None:
        return "n/a"
    return f"{op['sensitivity']:.2f} / {op['specificity']:.2f}"


def _calibration(metrics: Mapping[str, Any]) -> str:
    rows = []
    for tname, task in (metrics.get("tasks", {}) or {}).items():
        if task.get("kind") not in ("multilabel", "binary"):
            continue
        for name, out in (task.get("outputs", {}) or {}).items():
            cal = out.get("calibration", {}) or {}
            label = name if name in labels.FINDING_INDEX or name == tname else f"{tname}/{name}"
            rows.append([label, cal.get("ece"), cal.get("ece_scaled"), cal.get("temperature")])
    if not rows:
        return ""
    intro = ("Expected calibration error (ECE, equal-width bins) of the predicted probabilities, before and after "
             "temperature scaling fitted on the validation split. Lower is better; probabilities are not risks "
             "unless calibrated on the population where the model is used.")
    return "## Calibration\n\n" + intro + "\n\n" + markdown_table(["output", "ECE", "ECE after T", "T"], rows) + "\n"


def _auxiliary(metrics: Mapping[str, Any]) -> str:
    rows = []
    for tname, task in (metrics.get("tasks", {}) or {}).items():
        for name, out in (task.get("outputs", {}) or {}).items():
            if name in labels.FINDING_INDEX:
                continue
            if task.get("kind") == "regression":
                rows.append([f"{tname}", "MAE (years)" if tname == "age" else "MAE", _ci(out.get("mae"))])
            else:
                rows.append([tname if name == tname else f"{tname}/{name}", "AUROC", _ci(out.get("auroc"))])
    if not rows:
        return ""
    return ("## Auxiliary tasks\n\nTrained with the findings to shape the shared features; reported for "
            "completeness.\n\n" + markdown_table(["task", "metric", "value [95% CI]"], rows) + "\n")


def _subgroups(metrics: Mapping[str, Any]) -> str:
    sub: Sequence[Mapping[str, Any]] = (metrics.get("findings", {}) or {}).get("subgroups", []) or []
    if not sub:
        return ""
    groups = list(dict.fromkeys((r["attribute"], r["group"]) for r in sub))
    cells: dict[str, dict[tuple[str, str], Mapping[str, Any]]] = {}
    for r in sub:
        cells.setdefault(r["finding"], {})[(r["attribute"], r["group"])] = r
    rows = []
    for finding, by_group in cells.items():
        if all(r.get("auroc") is None for r in by_group.values()):
            continue  # undefined in every group (no positives in this split)
        overall = next(iter(by_group.values())).get("overall")
        row: list[object] = [finding, "n/a" if overall is None else f"{overall:.3f}"]
        for key in groups:
            r = by_group.get(key)
            row.append("n/a" if r is None else _ci_row(r) + (" *" if r.get("flagged") else ""))
        rows.append(row)
    flagged = sum(bool(r.get("flagged")) for r in sub)
    intro = (f"AUROC [95% CI] per finding within sex, age and view groups; {flagged} cell(s) flagged with * (the "
             "upper end of the group's CI lies below the finding's overall AUROC). Findings undefined in every "
             "group are left out; report.md has positives per cell.")
    headers = ["finding", "overall"] + [f"{a}: {g}" for a, g in groups]
    return "## Subgroups\n\n" + intro + "\n\n" + markdown_table(headers, rows) + "\n"


def _limitations(metrics: Mapping[str, Any]) -> str:
    items = [f"- **{title}.** {text}" for title, text in LIMITATIONS]
    if (metrics.get("data", {}) or {}).get("kind") == "phantom":
        items.insert(0, "- **PHANTOM data.** The images are synthetic; nothing here describes performance on real "
                        "chest X-rays.")
    return "## Known limitations\n\n" + "\n".join(items) + "\n"


def _reproduce(run: Path, metrics: Mapping[str, Any], config: Any) -> str:
    data = metrics.get("data", {}) or {}
    root, kind = str(data.get("root")), data.get("kind")
    size = config.data.image_size
    b = metrics.get("bootstrap", {}) or {}
    steps = []
    if kind == "phantom":
        steps.append(_phantom_command(Path(root)))
    elif kind == "nih":
        steps.append(f"cxrmtl download {root}")
    steps += [
        f"cxrmtl data check {root} --metadata-only",
        f"cxrmtl cache build {root} CACHE --size {size}",
        f"cxrmtl train {run / 'config.yaml'} --data {root} --cache CACHE --out NEW_RUN",
        f"cxrmtl evaluate NEW_RUN --data {root} --split {metrics.get('split')} --bootstrap {b.get('n_resamples')}",
    ]
    text = ("The run's resolved config (`config.yaml` in the run folder) holds every setting; these commands rebuild "
            "the model and this evaluation (docs/reproduce.md has wall times and disk use). GPU nondeterminism "
            "makes a retrained model differ slightly; the CIs above show how much that matters.")
    return "## How to reproduce\n\n" + text + "\n\n```bash\n" + "\n".join(steps) + "\n```\n"


def _phantom_command(root: Path) -> str:
    try:
        spec = json.loads((root / "phantom.json").read_text())
    except (OSError, ValueError):
        return f"cxrmtl phantom {root}    # with the options it was made with"
    opts = [f"--{k.replace('_', '-')} {spec[k]}" for k in ("patients", "size", "seed", "difficulty", "label_noise",
                                                             "prevalence", "box_share") if k in spec]
    return f"cxrmtl phantom {root} " + " ".join(opts)
