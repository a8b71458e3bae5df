"""Tables of the ablation result (``ablate.ablation.summarise``): OUT/ablation.md and a Section for the HTML report.

Everything is read from the JSON-ready result dict, so the report can be rebuilt from OUT/ablation.json alone.
Whatever the numbers say is what is printed: a verdict line per comparison says "better", "worse" or "no clear
difference" from the interval alone, also when multitask loses. "—" marks a finding an arm has no model for (the
single-task arm under ``--single rare``); "n/a" an AUROC that is undefined on the split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cxrmtl.report.render import Section, html_table, markdown_table

ARCHITECTURE_ARMS: tuple[str, ...] = ("multitask", "findings_only", "single_task")
NOT_TRAINED = "—"


def _mean_sd(spread: Mapping[str, Any], *, digits: int = 3) -> str:
    mean, sd = spread.get("mean"), spread.get("sd")
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _delta(row: Mapping[str, Any] | None) -> str:
    if row is None or row.get("compared") is False:
        return NOT_TRAINED
    if row.get("diff") is None:
        return "n/a"
    return f"{row['diff']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]"


def verdict(row: Mapping[str, Any]) -> str:
    """Plain words for a difference A - B with its interval."""
    if row.get("diff") is None:
        return "undefined (a class is missing)"
    if row["low"] > 0:
        return "better"
    if row["high"] < 0:
        return "worse"
    return "no clear difference"


def _comparison(result: Mapping[str, Any], group: str, a: str, b: str) -> Mapping[str, Any] | None:
    for comp in result["comparisons"]:
        if (comp["group"], comp["a"], comp["b"]) == (group, a, b):
            return comp
    return None


def _title(result: Mapping[str, Any], arm: str) -> str:
    """The arm's name; the multitask arm says its weighting, with * when the config gives static task weights."""
    title = result["arms"][arm]["title"]
    star = "*" if result.get("baseline_weights") else ""
    return f"{title} ({result['baseline_weighting']}{star})" if arm == "multitask" else title


def _weights_text(result: Mapping[str, Any]) -> str:
    weights = result.get("baseline_weights") or {}
    if not weights:
        return ""
    listed = ", ".join(f"{k} {v:g}" for k, v in weights.items())
    return (f" *Static task weights of the config: {listed} (other tasks 1); the weighting arms run their method "
            "without them.")


def _predicts(result: Mapping[str, Any], arm: str, finding: str) -> bool:
    covered = result["arms"][arm].get("covered")
    return covered is None or finding in covered


def _full(result: Mapping[str, Any], arm: str) -> bool:
    return all(_predicts(result, arm, f) for f in result["findings"])


def auroc_rows(result: Mapping[str, Any], arms: Sequence[str], deltas: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Per finding: positives, AUROC mean ± SD per arm, Δ [CI] per comparison; then the macro mean over all findings
    and, under a label cut, the macro mean over the cut findings."""
    cut = result.get("cut_findings") or []
    rows = []
    for k, finding in enumerate(result["findings"]):
        cells = [f"{finding} (cut)" if finding in cut else finding, str(result["positives"][finding])]
        cells += [_mean_sd(result["arms"][arm]["auroc"][finding]) if _predicts(result, arm, finding) else NOT_TRAINED
                  for arm in arms]
        cells += [_delta(comp["findings"][k]) for comp in deltas]
        rows.append(cells)
    macro = [macro_label(result, arms), ""]
    macro += [_mean_sd(result["arms"][arm]["macro_auroc"]) if _full(result, arm) else NOT_TRAINED for arm in arms]
    everything = list(result["findings"])
    rows.append(macro + [_delta(c["macro"]) if c["macro"].get("over", everything) == everything else NOT_TRAINED
                         for c in deltas])
    if cut:
        cut_row = [f"macro mean, cut findings ({len(cut)})", ""]
        cut_row += [_mean_sd(result["arms"][arm]["macro_auroc_cut"]) if result["arms"][arm].get("macro_auroc_cut")
                    else NOT_TRAINED for arm in arms]
        rows.append(cut_row + [_delta(c.get("macro_cut")) for c in deltas])
    return rows


def macro_label(result: Mapping[str, Any], arms: Sequence[str]) -> str:
    """"macro mean", saying over how many findings when some are undefined (a class missing on this split)."""
    findings = result["findings"]
    arms = [a for a in arms if _full(result, a)] or list(arms)
    defined = [f for f in findings if any(result["arms"][a]["auroc"][f].get("mean") is not None for a in arms)]
    if len(defined) == len(findings):
        return "macro mean"
    return f"macro mean over {len(defined)} of {len(findings)} findings ({len(findings) - len(defined)} undefined)"


def cost_rows(result: Mapping[str, Any], arms: Sequence[str]) -> list[list[str]]:
    """Per arm: models per seed, parameters, training seconds and inference ms per image (mean ± SD over seeds)."""
    rows = []
    for arm in arms:
        info = result["arms"][arm]
        params = info["parameters"]["mean"]
        rows.append([
            _title(result, arm),
            str(info["models_per_seed"]),
            f"{params / 1e6:.2f} M" if params is not None else "n/a",
            _mean_sd(info["train_seconds"], digits=1),
            _mean_sd(info["infer_ms_per_image"], digits=2),
        ])
    return rows


def banners(result: Mapping[str, Any]) -> list[str]:
    """Warnings shown above the tables: phantom or subset data (``eval.datakind``), a validation-split comparison."""
    out = []
    data = result.get("data") or {}
    if data.get("banner"):
        out.append(str(data["banner"]))
    elif result.get("phantom"):
        out.append("PHANTOM DATA: synthetic images, not comparable to published numbers")
    if result["split"] != "test":
        out.append(f"VALIDATION SPLIT: compared on `{result['split']}`, not on the held-out test split; the test "
                   "split is where a comparison is reported")
    return out


def _cut_text(result: Mapping[str, Any]) -> str:
    """The label-cut sentence of the context line ('' when every label was used)."""
    cut = result.get("label_cut")
    if not cut:
        return ""
    kept = "; ".join(f"{f} {_kept(info)} of {info['positives']}" for f, info in cut["per_finding"].items())
    return (f" **Reduced training labels**: {cut['fraction']:g} of the training split's positive labels of "
            f"{', '.join(cut['findings'])} kept per seed (chosen per image, seeded by the training seed; the others "
            f"masked, i.e. unlabelled, not negative; val and test keep every label): kept of positives {kept}.")


def _kept(info: Mapping[str, Any]) -> str:
    values = sorted(set(v for v in info["kept"] if v is not None))
    return "/".join(str(v) for v in values) if values else "?"


def _single_text(result: Mapping[str, Any]) -> str:
    single = result.get("single")
    if not single or single.get("all", True) or "single_task" not in result["arms"]:
        return ""
    names = single["findings"]
    return (f" Single-task models were trained only for {', '.join(names)} (the cut findings: the others' "
            "single-task models do not depend on the cut), so single-task comparisons cover those findings only.")


def _context(result: Mapping[str, Any]) -> str:
    data = (result.get("data") or {}).get("label") or (
        "the built-in phantom (synthetic images)" if result["phantom"] else f"`{result['data_root']}`")
    epochs = ((result.get("config") or {}).get("train") or {}).get("epochs")
    steps = (f"{result['max_steps']} optimizer steps" if result["max_steps"]
             else f"{epochs} epochs" if epochs else "the config's epochs")
    n_boot = result["comparisons"][0]["n_resamples"] if result["comparisons"] else 0
    checkpoint = ("every model scored with its final checkpoint (the same rule in every arm; no per-finding "
                  "best-epoch choice)" if result.get("checkpoint") == "last" else "best checkpoint on val")
    return (
        f"Data: {data} from `{result['data_root']}`; split `{result['split']}`: {result['images']} images of "
        f"{result['patients']} patients. Seeds {result['seeds']}, every model trained for {steps}, {checkpoint}. "
        f"AUROC: mean ± SD over seeds. Δ = AUROC(first) − AUROC(second), mean over seeds, with a 95% paired "
        f"patient-level bootstrap interval ({n_boot} resamples of patients, the same draws for both models and all "
        "seeds)." + _weights_text(result) + _cut_text(result) + _single_text(result)
    )


def _verdicts(result: Mapping[str, Any], comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    everything = list(result["findings"])
    for comp in comparisons:
        macro, head = comp["macro"], f"{_title(result, comp['a'])} vs {_title(result, comp['b'])}"
        if macro.get("over", everything) == everything:
            lines.append(f"{head}: macro Δ {_delta(macro)} — {verdict(macro)}.")
        cut = comp.get("macro_cut")
        if cut:
            lines.append(f"{head}, cut findings: macro Δ {_delta(cut)} — {verdict(cut)}.")
    return lines


def curve_rows(result: Mapping[str, Any], arms: Sequence[str]) -> list[list[str]]:
    """Per arm (and over the cut findings): mean val AUROC at each evaluation, the last third's gain, verdict."""
    rows = []
    curves = result.get("curves") or {}
    for arm in arms:
        if arm not in curves:
            continue
        for label, curve in ((_title(result, arm), curves[arm]), (f"{_title(result, arm)}, cut findings",
                                                                   curves[arm].get("cut"))):
            if not curve:
                continue
            values = " ".join("n/a" if v is None else f"{v:.3f}" for v in curve["values"])
            gain = curve.get("gain_last_third")
            rows.append([label, str(len(curve["values"])), values, "n/a" if gain is None else f"{gain:+.3f}",
                         str(curve["verdict"])])
    return rows


def cut_rows(result: Mapping[str, Any]) -> list[list[str]]:
    """Per cut finding: training positives, positives kept (per seed), share kept."""
    cut = result.get("label_cut") or {}
    rows = []
    for finding, info in (cut.get("per_finding") or {}).items():
        kept = ", ".join("?" if v is None else str(v) for v in info["kept"])
        rows.append([finding, str(info["positives"]), kept, f"{cut['fraction']:g}"])
    return rows


def _blocks(result: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(heading, headers, rows, text after) of every table."""
    arch = [a for a in ARCHITECTURE_ARMS if a in result["arms"]]
    arch_comps = [c for c in result["comparisons"] if c["group"] == "architecture"]
    heads = ["finding", "positives", *(_title(result, a) for a in arch)]
    heads += [f"Δ {_title(result, c['a'])} − {_title(result, c['b'])}" for c in arch_comps]
    verdicts = " ".join(_verdicts(result, arch_comps))
    blocks = [("Per-finding AUROC", heads, auroc_rows(result, arch, arch_comps), verdicts)]
    weights = [a for a in result["arms"] if a.startswith("weighting:")]
    if weights:
        w_arms = ["multitask", *weights]
        w_comps = [c for c in result["comparisons"] if c["group"] == "weighting"]
        w_heads = ["finding", "positives", *(_title(result, a) for a in w_arms)]
        w_heads += [f"Δ {_title(result, c['a'])} − baseline" for c in w_comps]
        blocks.append(("Loss weighting methods", w_heads, auroc_rows(result, w_arms, w_comps),
                       " ".join(_verdicts(result, w_comps))))
    cost_heads = ["model", "models per seed", "parameters", "training s", "inference ms/image"]
    all_arms = [*arch, *weights]
    blocks.append(("Cost", cost_heads, cost_rows(result, all_arms),
                   "Training time is wall time of the training call (shared machine: compare ratios); single-task "
                   "sums its models; inference runs the evaluation split with batch size 64."))
    if result.get("curves"):
        from cxrmtl.labels import ABLATION_PLATEAU_TOLERANCE

        blocks.append((
            "Validation curves (budget check)",
            ["arm", "evaluations", "mean val AUROC at each evaluation (mean over seeds)", "gain in last third",
             "verdict"],
            curve_rows(result, all_arms),
            "One evaluation per epoch on the validation split (never used to pick a checkpoint). An arm's value is the "
            "mean AUROC over its findings (single-task: each model's own finding), averaged over seeds. Verdict: "
            f"\"plateaued\" when the best of the last third of the evaluations is at most {ABLATION_PLATEAU_TOLERANCE} "
            "above the best before it; \"still rising\" means the final checkpoint is early for that arm."))
    if result.get("label_cut"):
        blocks.append(("Reduced training labels", ["finding", "training positives", "kept (per seed)", "fraction"],
                       cut_rows(result), "Kept labels are chosen per image with a generator seeded by the training "
                       "seed; every arm of one seed sees the same labels. RUN/label_cut.json lists the kept images."))
    return blocks


def ablation_markdown(result: Mapping[str, Any]) -> str:
    """OUT/ablation.md."""
    parts = ["# Multitask ablation", "", *(f"> **{text}**\n" for text in banners(result)), _context(result), ""]
    for heading, headers, rows, after in _blocks(result):
        parts += [f"## {heading}", "", markdown_table(headers, rows).rstrip("\n"), ""]
        if after:
            parts += [after, ""]
    return "\n".join(parts)


def ablation_section(result: Mapping[str, Any]) -> Section:
    """The ablation as one report Section (``cxrmtl evaluate RUN --section OUT/ablation_section.json``)."""
    import html

    md = [*(f"> **{text}**\n" for text in banners(result)), _context(result), ""]
    css = "danger" if result.get("phantom") else "warn"
    body = [f'<div class="banner {css}">{html.escape(text)}</div>' for text in banners(result)]
    body.append(f"<p>{html.escape(_context(result))}</p>")
    for heading, headers, rows, after in _blocks(result):
        md += [f"### {heading}", "", markdown_table(headers, rows).rstrip("\n"), ""]
        body += [f"<h3>{html.escape(heading)}</h3>", html_table(headers, rows)]
        if after:
            md += [after, ""]
            body.append(f'<p class="small">{html.escape(after)}</p>')
    note = (result.get("data") or {}).get("label") or ("phantom data" if result["phantom"] else "")
    note = f"{note}; split {result['split']}" if note else f"split {result['split']}"
    return Section(title="Multitask ablation", markdown="\n".join(md), html="".join(body), note=note)
