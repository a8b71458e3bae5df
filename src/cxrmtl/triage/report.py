"""What a reading-room simulation reports: triage.md, the time-to-report figure and the evaluation-report section.

Everything is drawn from the triage.json document (``simulate.summary_json`` plus run information), so the three
outputs always say the same thing. Every heading and the figure title name the data (PHANTOM, subset, NIH).
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

from cxrmtl.report.render import Figure, Section, html_table, markdown_table
from cxrmtl.triage.simulate import ALL_GROUP, CRITICAL_GROUP

DATA_LABELS = {"phantom": "PHANTOM", "nih": "NIH ChestX-ray14", "subset": "NIH-layout subset"}
FIGURE_NAME = "triage_time_to_report"
_POLICY_COLORS = {"fifo": "#7f7f7f", "urgency": "#1f77b4", "urgency_upper_limit": "#d62728"}


def data_label(doc: Mapping[str, Any]) -> str:
    """e.g. "PHANTOM, test split" or "NIH ChestX-ray14, official test split"."""
    kind = str(doc.get("data_kind", "unknown"))
    split = str(doc.get("split", "?"))
    split_text = "official test split" if kind == "nih" and split == "test" else f"{split} split"
    return f"{DATA_LABELS.get(kind, 'unknown data')}, {split_text}"


def _interval(entry: Mapping[str, Any] | None, digits: int = 1) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    low, high = entry.get("low"), entry.get("high")
    ci = f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None and high is not None else ""
    return f"{entry['value']:.{digits}f}{ci}"


def _present(doc: Mapping[str, Any], group: str) -> bool:
    """True when the pool has studies of this group (a finding without true positives has no row)."""
    if group == ALL_GROUP:
        return True
    if group == CRITICAL_GROUP:
        return any(doc["pool"]["true_positives"].get(c) for c in doc["pool"]["critical"])
    return bool(doc["pool"]["true_positives"].get(group))


def highlighted_groups(doc: Mapping[str, Any]) -> list[str]:
    """The critical pool, each critical finding (when there are several) present in the pool, and all studies."""
    critical = list(doc["pool"]["critical"])
    groups = [CRITICAL_GROUP, *(critical if len(critical) > 1 else []), ALL_GROUP]
    return [g for g in groups if _present(doc, g)]


def other_groups(doc: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(the remaining findings with true positives in the pool, those without)."""
    rest = [g for g in doc["groups"] if g not in (CRITICAL_GROUP, ALL_GROUP, *highlighted_groups(doc))]
    return [g for g in rest if _present(doc, g)], [g for g in rest if not _present(doc, g)]


def _rows(doc: Mapping[str, Any], groups: Sequence[str]) -> list[list[str]]:
    rows = []
    for group in groups:
        for name, policy in doc["policies"].items():
            entry = policy["groups"][group]
            ratio = entry.get("ratio_to_fifo", {})
            rows.append([group, name, _interval(entry["n_per_day"]), _interval(entry["mean"]),
                         _interval(entry["median"]), _interval(entry["p95"]), _interval(entry["max"]),
                         _interval(ratio.get("mean"), 2) if ratio else "ref", _interval(ratio.get("max"), 2) if ratio
                         else "ref"])
    return rows


HEADERS = ("studies", "policy", "n per day", "mean (min)", "median", "p95", "max", "mean / FIFO", "max / FIFO")


def setup_lines(doc: Mapping[str, Any]) -> list[str]:
    o, pool = doc["options"], doc["pool"]
    limit = "none" if o["upper_limit_minutes"] is None else f"{o['upper_limit_minutes']:.1f} min" + (
        " (auto: FIFO's longest wait in this room, mean of separate calibration days)"
        if o.get("upper_limit_rule") == "auto" else "")
    method = (doc.get("thresholds") or {}).get("method")
    basis = {"thresholds": f"the run's validation operating thresholds ({method})",
             "probabilities": "probabilities only (no validation thresholds: p >= 0.5 counts as positive)",
             "mixed": "validation thresholds where defined, p >= 0.5 elsewhere"}.get(pool["urgency_basis"], "?")
    levels = ", ".join(f"{k} {v}" for k, v in pool["levels"].items())
    return [
        f"Reading room: {o['arrivals_per_hour']:g} studies/hour (Poisson) for {o['hours']:g} h, {o['readers']} "
        f"reader(s), {o['read_time']} read times with mean {o['read_minutes']:g} min: offered utilisation "
        f"{o['offered_utilisation']:.2f}; upper limit {limit}; {o['seeds']} simulated days (seed {o['seed']}), "
        f"{_interval(doc['studies_per_day'], 0)} studies per day.",
        f"Studies drawn from {pool['images']} images of the {doc.get('split', '?')} split with their TRUE labels "
        f"and the model's urgency ({levels}); positive calls from {basis}. Critical findings: "
        f"{', '.join(pool['critical'])}.",
        f"Intervals: {o['level'] * 100:g}% percentile intervals over the simulated days; ratios are per day "
        "against FIFO on the same arrivals (paired).",
    ]


def goal_line(doc: Mapping[str, Any]) -> str:
    goal = doc["goal"]
    mean, mx = goal["mean_ratio"], goal["max_ratio"]
    if goal["met"] is None:
        return f"Goal: undefined ({goal['policy']}, {goal['group']}: no such study in any simulated day)."
    verdict = "MET" if goal["met"] else "NOT MET"
    return (f"Goal {verdict} ({goal['policy']}, {goal['group']}): mean time to report "
            f"{_interval(mean, 2)} x FIFO (target <= {goal['mean_target']}), maximum {_interval(mx, 2)} x FIFO "
            f"(target <= {goal['max_target']}). Reference: {goal['source']}.")


def summary_line(doc: Mapping[str, Any]) -> str:
    """One line for the CLI and the demo: data, critical mean/max ratios, the verdict."""
    goal = doc["goal"]
    mean, mx = goal["mean_ratio"].get("value"), goal["max_ratio"].get("value")
    fifo = doc["policies"]["fifo"]["groups"][goal["group"]]["mean"].get("value")
    pol = doc["policies"][goal["policy"]]["groups"][goal["group"]]["mean"].get("value")
    if goal["met"] is None or mean is None or mx is None or fifo is None or pol is None:
        return f"triage ({data_label(doc)}): no critical study in the simulated days; goal undefined"
    verdict = "met" if goal["met"] else "not met"
    return (f"triage ({data_label(doc)}): critical findings reported in {pol:.1f} min on average with "
            f"{goal['policy']} vs {fifo:.1f} min FIFO ({mean:.2f} x; goal <= {goal['mean_target']}), maximum "
            f"{mx:.2f} x FIFO (goal <= {goal['max_target']}): goal {verdict}")


def markdown(doc: Mapping[str, Any], *, figure_file: str | None = None) -> str:
    """The triage.md document."""
    label = data_label(doc)
    parts = [f"# Reading-room simulation: {doc.get('run_name', 'run')} ({label})", ""]
    if doc.get("data_kind") == "phantom":
        parts += ["**PHANTOM DATA**: synthetic images and labels; these times describe the simulation fed with "
                  "phantom predictions, not clinical performance.", ""]
    parts += [f"**{goal_line(doc)}**", "", *[f"- {line}" for line in setup_lines(doc)], ""]
    crit = ", ".join(doc["pool"]["critical"])
    parts += [f"## Critical findings ({crit}) and all studies ({label})", "",
              markdown_table(HEADERS, _rows(doc, highlighted_groups(doc))), ""]
    if figure_file:
        parts += [f"![time to report per policy ({label})]({figure_file})", ""]
    others, absent = other_groups(doc)
    parts += [f"## Each finding's true-positive studies ({label})", "",
              markdown_table(HEADERS, _rows(doc, others)) if others else "None in the pool.", ""]
    if absent:
        parts += [f"No true positive in the pool (no row): {', '.join(absent)}.", ""]
    queue_rows = [[name, _interval(p["waiting_at_close"]), _interval(p["reader_busy_share"], 2)]
                  for name, p in doc["policies"].items()]
    parts += ["## Queue", "", markdown_table(("policy", "waiting at closing time", "reader busy share"),
                                              queue_rows), "",
              "Time to report = report time - arrival, reading included. After closing time no study arrives and "
              "the readers clear the queue. Policies: " + "; ".join(
                  f"`{n}`: {p['description']}" for n, p in doc["policies"].items()) + ".", ""]
    return "\n".join(parts)


def figure(doc: Mapping[str, Any]) -> Figure:
    """Mean and maximum time to report per policy for the critical findings and all studies, with intervals."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    groups = highlighted_groups(doc)
    policies = list(doc["policies"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(policies)
    for ax, stat in zip(axes, ("mean", "max"), strict=True):
        for j, name in enumerate(policies):
            entries = [doc["policies"][name]["groups"][g][stat] for g in groups]
            vals = np.array([e["value"] if e["value"] is not None else np.nan for e in entries])
            low = np.array([e["low"] if e["low"] is not None else np.nan for e in entries])
            high = np.array([e["high"] if e["high"] is not None else np.nan for e in entries])
            x = np.arange(len(groups)) + (j - (len(policies) - 1) / 2) * width
            ax.bar(x, vals, width, label=name, color=_POLICY_COLORS.get(name, f"C{j}"))
            ax.errorbar(x, vals, yerr=[np.nan_to_num(vals - low), np.nan_to_num(high - vals)], fmt="none",
                        ecolor="black", capsize=2, linewidth=0.8)
        ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
        ax.set_ylabel("minutes")
        ax.set_title(f"{stat} time to report")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Reading-room simulation ({data_label(doc)}): {doc['options']['seeds']} days, "
                 f"{doc['options']['level'] * 100:g}% intervals", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    caption = f"Time to report per policy, critical findings and all studies ({data_label(doc)})"
    return Figure(caption=caption, png=buf.getvalue(), name=FIGURE_NAME)


def section(doc: Mapping[str, Any], fig: Figure | None = None) -> Section:
    """The evaluation report's triage section (goal, setup, the critical table and the figure)."""
    label = data_label(doc)
    rows = _rows(doc, highlighted_groups(doc))
    setup = setup_lines(doc)
    md = "\n\n".join([f"**{goal_line(doc)}**", "\n".join(f"- {s}" for s in setup), markdown_table(HEADERS, rows)])
    body = (f"<p><strong>{html.escape(goal_line(doc))}</strong></p><ul>"
            + "".join(f"<li>{html.escape(s)}</li>" for s in setup) + "</ul>" + html_table(HEADERS, rows))
    return Section(title="Triage: reading-room simulation", markdown=md, html=body,
                   figures=(fig,) if fig is not None else (), note=f"{label}; simulated days, not a clinical trial")

