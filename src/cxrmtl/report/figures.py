"""Report figures as PNG bytes (matplotlib, Agg backend): ROC and PR curves, reliability diagrams, training curves.

Each function returns a ``report.Figure`` so the report can inline it (base64) in HTML and write it next to
report.md. Figures are drawn from the same arrays the metrics use; nothing is re-estimated here.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from cxrmtl.eval.calibration import apply_temperature, reliability
from cxrmtl.eval.evaluate import TaskOutputs
from cxrmtl.report.render import Figure

_DPI = 80  # small, crisp enough on screen; keeps report.html around 1 MB
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: object) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)  # fixed layout: no bbox_inches="tight" (it draws the figure twice)
    plt.close(fig)
    return buf.getvalue()


def _grid(n: int, *, cell: float = 2.6) -> tuple[object, np.ndarray]:
    plt = _pyplot()
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    # Shared axes: inner panels carry no tick labels, which is most of the text matplotlib has to draw.
    height = cell * rows + 0.4
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, height), squeeze=False, sharex=True, sharey=True)
    # Fixed spacing instead of tight_layout (another full draw, seconds on a busy 2-core machine); margins in inches
    # (0.55 in on top for the two-line titles, 0.5 in at the bottom for tick labels) so any row count fits.
    fig.subplots_adjust(left=0.3 / cols + 0.02, right=0.98, bottom=0.5 / height, top=1 - 0.55 / height, wspace=0.38,
                        hspace=0.75)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for col in range(cols):  # mark the lowest visible panel of each column for its x labels
        lowest = max(r for r in range(rows) if r * cols + col < n)
        axes[lowest, col]._cxr_bottom = True
    return fig, axes.flat


def _outer_labels(ax: object, xlabel: str, ylabel: str) -> None:
    """Axis labels only on the lowest visible panel of each column and on the left column of a grid."""
    if getattr(ax, "_cxr_bottom", False):
        ax.set_xlabel(xlabel, fontsize=7)
        ax.xaxis.set_tick_params(labelbottom=True)
    if ax.get_subplotspec().is_first_col():
        ax.set_ylabel(ylabel, fontsize=7)


def _undefined(ax: object) -> None:
    ax.text(0.5, 0.5, "undefined:\nonly one class", ha="center", va="center", fontsize=8, color="#9b1c1c",
            transform=ax.transAxes)


def _fmt(value: object) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def roc_grid(task: TaskOutputs, outputs: Mapping[str, Mapping[str, object]]) -> Figure:
    """One ROC curve per output, AUROC (with CI) in each title; undefined outputs say so."""
    from sklearn.metrics import roc_curve

    fig, axes = _grid(len(task.names))
    for k, (ax, name) in enumerate(zip(axes, task.names, strict=False)):
        keep = task.mask[:, k]
        y, s = task.targets[keep, k].astype(bool), task.scores[keep, k]
        ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8, ls="--")
        auc = outputs.get(name, {}).get("auroc", {})
        if y.any() and not y.all():
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, color=_COLORS[0], lw=1.4)
        else:
            _undefined(ax)
        ax.set_title(f"{name}\nAUROC {_fmt(auc.get('value'))}", fontsize=9)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1.01)
        ax.tick_params(labelsize=7)
        _outer_labels(ax, "1 - specificity", "sensitivity")
    return Figure(caption=f"ROC curves ({task.name})", png=_png(fig), name=f"roc_{_slug(task.name)}")


def pr_grid(task: TaskOutputs, outputs: Mapping[str, Mapping[str, object]]) -> Figure:
    """One precision-recall curve per output; the dashed line is the prevalence (a random model's AUPRC)."""
    from sklearn.metrics import precision_recall_curve

    fig, axes = _grid(len(task.names))
    for k, (ax, name) in enumerate(zip(axes, task.names, strict=False)):
        keep = task.mask[:, k]
        y, s = task.targets[keep, k].astype(bool), task.scores[keep, k]
        ap = outputs.get(name, {}).get("auprc", {})
        if y.any() and not y.all():
            precision, recall, _ = precision_recall_curve(y, s)
            ax.step(recall, precision, where="post", color=_COLORS[1], lw=1.4)
            ax.axhline(y.mean(), color="#bbbbbb", lw=0.8, ls="--")
        else:
            _undefined(ax)
        ax.set_title(f"{name}\nAUPRC {_fmt(ap.get('value'))}", fontsize=9)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1.01)
        ax.tick_params(labelsize=7)
        _outer_labels(ax, "recall", "precision")
    return Figure(caption=f"Precision-recall curves ({task.name})", png=_png(fig), name=f"pr_{_slug(task.name)}")


def reliability_grid(task: TaskOutputs, temperatures: Mapping[str, float | None], *, n_bins: int) -> Figure:
    """Reliability diagram per output: observed rate vs mean probability, before and after temperature scaling."""
    fig, axes = _grid(len(task.names))
    for k, (ax, name) in enumerate(zip(axes, task.names, strict=False)):
        keep = task.mask[:, k]
        y, s = task.targets[keep, k], task.scores[keep, k]
        ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8, ls="--")
        curves = [("before", s, _COLORS[0])]
        temp = temperatures.get(name)
        if temp is not None:
            curves.append((f"after (T={temp:.2f})", apply_temperature(s, temp), _COLORS[2]))
        for label, probs, color in curves:
            rel = reliability(probs, y, n_bins=n_bins)
            full = rel.count > 0
            ax.plot(rel.confidence[full], rel.observed[full], marker="o", ms=3, lw=1.2, color=color, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1.01)
        ax.tick_params(labelsize=7)
        _outer_labels(ax, "mean predicted probability", "observed rate")
        ax.legend(fontsize=6, loc="upper left")
    return Figure(caption=f"Reliability diagrams ({task.name})", png=_png(fig), name=f"reliability_{_slug(task.name)}")


def read_log(path: Path) -> list[dict[str, object]]:
    """Records of RUN/log.jsonl; a line cut by a kill (or any unparsable line) is skipped, not fatal."""
    records = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _series(records: Iterable[Mapping[str, object]], x_key: str, keys: Iterable[str]) -> dict[str, tuple[list, list]]:
    out: dict[str, tuple[list, list]] = {}
    for rec in records:
        x = rec.get(x_key)
        if not isinstance(x, int | float):
            continue
        for key in keys:
            value = rec.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                out.setdefault(key, ([], []))[0].append(x)
                out[key][1].append(value)
    return out


def _is_loss(key: str) -> bool:
    return "loss" in key and not key.startswith("val/")


def _is_val_auroc(key: str) -> bool:
    return key.startswith("val/") and key.endswith("auroc_mean")


def _is_val_error(key: str) -> bool:
    return key.startswith("val/") and (key.endswith("mae_years") or "loss" in key)


def training_curves(records: list[dict[str, object]]) -> Figure | None:
    """Training losses per step, validation AUROCs and errors (MAE years, losses) per epoch; None if nothing logged.

    AUROCs (0-1) and errors (years) get separate panels so neither squashes the other.
    """
    steps = [r for r in records if r.get("event") == "step"]
    epochs = [r for r in records if r.get("event") == "epoch"]
    panels = [
        (_series(steps, "step", sorted({k for r in steps for k in r if _is_loss(k)})), "step", "training loss"),
        (_series(epochs, "epoch", sorted({k for r in epochs for k in r if _is_val_auroc(k)})), "epoch",
         "validation AUROC"),
        (_series(epochs, "epoch", sorted({k for r in epochs for k in r if _is_val_error(k)})), "epoch",
         "validation error"),
    ]
    panels = [p for p in panels if p[0]]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    for ax, (series, xlabel, title) in zip(axes.flat, panels, strict=True):
        for i, (key, (x, y)) in enumerate(sorted(series.items())[:12]):
            ax.plot(x, y, lw=1.2, marker="o" if len(x) < 30 else None, ms=3, color=_COLORS[i % len(_COLORS)], label=key)
        ax.set_xlabel(xlabel, fontsize=8), ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.9, wspace=0.25)
    return Figure(caption="Training curves (RUN/log.jsonl)", png=_png(fig), name="training_curves")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower() or "figure"
