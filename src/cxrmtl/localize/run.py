"""Localisation of a trained run: Grad-CAM on every boxed image of a split, Wang et al.'s scoring, a PNG gallery.

For each (image, finding) with a ground-truth box (``NIHIndex.boxes``, mapped into the cache image) the findings
head's output for that finding is explained with a CAM (``localize.cam``); its heatmap becomes boxes by a rule of
``localization.BOX_RULES`` (the default, or Wang's own for the protocol number; the name is in every output) and the
cases are scored at every T(IoBB) and T(IoU) (``localize.localization``). The gallery keeps the first cases, in
image-name order, of each kind at T(IoBB) = ``labels.LOC_GALLERY_IOBB``: true positives (a predicted box hits a true
box), false positives (a predicted box hits nothing) and misses (no predicted box hits); one case can be both a hit
and carry a false positive. Cases are processed in batches and drawn as they come, so memory does not grow with the
split. Every output carries the data description of ``eval.datakind`` (phantom / subset banner; Wang et al.'s
numbers only beside the complete official test split).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrmtl import labels
from cxrmtl.errors import EvaluationError
from cxrmtl.eval.datakind import DataDescription, describe_data
from cxrmtl.localize.localization import (
    LocalizationCase,
    accuracy_rows,
    accuracy_table,
    box_rule,
    case_outcome,
    evaluate_localization,
    finding_rows,
    finding_table,
    ground_truth_boxes,
    heatmap_peak,
    image_sizes,
    iobb,
    iou_rows,
    iou_table,
    pointing_game,
    pointing_rows,
    pointing_table,
)

WANG_SOURCE = ("Wang et al. 2017, ChestX-ray8, arXiv:1705.02315: 14-class ResNet-50, real NIH test images with "
               "boxes, Wang's box rule")

# Gallery kinds: name -> test on (localised, false positives) at the gallery threshold.
GALLERY_KINDS: dict[str, Callable[[bool, int], bool]] = {
    "true_positive": lambda hit, fp: hit,
    "false_positive": lambda hit, fp: fp > 0,
    "miss": lambda hit, fp: not hit,
}


@dataclass(frozen=True)
class _Pending:
    image: str
    finding: str
    cache_row: int
    column: int
    gt: np.ndarray


@dataclass
class LocalizationResult:
    """Scored cases of one run and split, the two accuracy tables and the gallery files written."""

    split: str
    task: str
    cases: list[LocalizationCase]
    iobb: pd.DataFrame
    iou: pd.DataFrame
    skipped: int  # boxed images of the split left out: file missing or unreadable, or boxes outside the crop
    gallery: dict[str, list[str]] = field(default_factory=dict)
    data: DataDescription | None = None  # what the split's readable images are (phantom, subset, official)
    pointing: pd.DataFrame | None = None  # pointing game per finding (localization.pointing_game)
    cam: str = labels.LOC_DEFAULT_CAM  # localize.cam.CAM_METHODS name the heatmaps came from
    layer: str = ""  # module the CAM was taken from
    box_rule: str = labels.LOC_DEFAULT_BOX_RULE  # localization.BOX_RULES name the boxes were drawn by

    @property
    def mean_iobb05(self) -> float | None:
        """Mean over the boxed findings of the accuracy at T(IoBB) = 0.5 (None without cases)."""
        at = self.iobb[self.iobb["threshold"] == 0.5] if not self.iobb.empty else self.iobb
        return float(at["accuracy"].mean()) if len(at) else None

    @property
    def mean_afp05(self) -> float | None:
        """Mean over the boxed findings of the false boxes per case at T(IoBB) = 0.5."""
        at = self.iobb[self.iobb["threshold"] == 0.5] if not self.iobb.empty else self.iobb
        return float(at["afp"].mean()) if len(at) else None

    @property
    def comparable(self) -> bool:
        """Whether Wang et al.'s numbers may stand next to ours: only on the complete official test split."""
        return self.data is not None and self.data.comparable

    def to_json(self) -> dict[str, Any]:
        return {
            "data": self.data.to_json() if self.data is not None else None,
            "split": self.split,
            "task": self.task,
            "cases": len(self.cases),
            "skipped_unreadable": self.skipped,
            "box_rule": self.box_rule,
            "box_rule_params": dict(box_rule(self.box_rule).params),
            "heatmap_thresholds": list(labels.LOC_HEATMAP_THRESHOLDS),  # Wang's rule's, whichever rule drew
            "iobb": self.iobb.to_dict(orient="records"),
            "iou": self.iou.to_dict(orient="records"),
            "cam": self.cam,
            "layer": self.layer,
            "mean_iobb_0.5": {"accuracy": self.mean_iobb05, "afp": self.mean_afp05},
            "pointing_game": self.pointing.to_dict(orient="records") if self.pointing is not None else [],
            "wang2017_iobb_0.5": dict(labels.WANG_IOBB05_ACCURACY) if self.comparable else None,
            "wang2017_reference": {"iobb_0.5": dict(labels.WANG_IOBB05_ACCURACY), "comparable": self.comparable,
                                   "source": WANG_SOURCE},
            "gallery": self.gallery,
        }


def _findings_task(task_labels: Mapping[str, list[str]]) -> str:
    tasks = [t for t in task_labels if t == "findings" or t.startswith("findings:")]
    if not tasks:
        raise EvaluationError(f"run: no findings task to localise (tasks: {sorted(task_labels)})")
    return tasks[0]


def pending_cases(index: Any, cache: Any, *, split: str, outputs: list[str]) -> tuple[list[_Pending], int]:
    """Boxed (image, finding) pairs of ``split`` whose finding the head predicts; and the boxed images left out."""
    names = set(index.table["image"].to_numpy()[index.rows(split)].tolist())
    boxed = sorted(names & set(index.boxes["image"]))
    gt = ground_truth_boxes(index.boxes, image_sizes(index.table, boxed), size=cache.size, images=boxed)
    images = sorted({image for image, _ in gt})
    rows = dict(zip(images, cache.rows_for(images).tolist(), strict=True))
    pending = [
        _Pending(image=image, finding=finding, cache_row=rows[image], column=outputs.index(finding), gt=boxes)
        for (image, finding), boxes in sorted(gt.items())
        if finding in outputs and rows[image] >= 0
    ]
    unreadable = sum(1 for image in images if rows[image] < 0) + len(set(boxed) - set(images))
    return pending, unreadable


def localize_run(
    loaded: Any,
    cache: Any,
    index: Any,
    *,
    split: str = "test",
    batch_size: int = 16,
    layer: str | None = None,
    cam: str = labels.LOC_DEFAULT_CAM,
    rule: str = labels.LOC_DEFAULT_BOX_RULE,
    gallery_dir: Path | None = None,
    gallery_per_kind: int = 8,
) -> LocalizationResult:
    """CAM (``cam``: a ``CAM_METHODS`` name), boxes (``rule``: a ``BOX_RULES`` name), Wang-style scores and the
    pointing game for every boxed image of ``split``; PNGs into ``gallery_dir``."""
    import torch

    from cxrmtl.data.loader import normalize
    from cxrmtl.localize.cam import cam_class, grad_cam, layer_name

    cam_class(cam)  # an unknown method or rule fails before any work
    to_boxes = box_rule(rule).boxes
    if batch_size < 1:
        raise EvaluationError(f"batch_size: must be at least 1, got {batch_size}")
    task = _findings_task(loaded.labels)
    pending, skipped = pending_cases(index, cache, split=split, outputs=list(loaded.labels[task]))
    gallery = _Gallery(gallery_dir, per_kind=gallery_per_kind)
    cases = []
    cfg = loaded.config.data
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        pixels = np.stack([np.asarray(cache.images[p.cache_row]) for p in chunk])
        x = normalize(torch.from_numpy(pixels).unsqueeze(1), mean=cfg.pixel_mean, std=cfg.pixel_std)
        maps = grad_cam(loaded.model, x, task=task, columns=[p.column for p in chunk], layer=layer, method=cam,
                        min_side=labels.LOC_CAM_MIN_SIDE, stages=labels.LOC_CAM_STAGES)
        for p, image, heat in zip(chunk, pixels, maps, strict=True):
            case = LocalizationCase(image=p.image, finding=p.finding, pred=to_boxes(heat), gt=p.gt,
                                    peak=heatmap_peak(heat))
            cases.append(case)
            gallery.offer(case, image, heat)
    return LocalizationResult(split=split, task=task, cases=cases, iobb=evaluate_localization(cases, kind="iobb"),
                              iou=evaluate_localization(cases, kind="iou"), skipped=skipped, gallery=gallery.files,
                              data=describe_split(index, cache, split=split), pointing=pointing_game(cases),
                              cam=cam, box_rule=rule,
                              layer=layer_name(loaded.model, layer=layer, image_size=cache.size,
                                               min_side=labels.LOC_CAM_MIN_SIDE, stages=labels.LOC_CAM_STAGES))


def describe_split(index: Any, cache: Any, *, split: str) -> DataDescription | None:
    """The data kind of the split's readable images (the images a run can be scored on; ``eval.datakind``)."""
    rows = index.rows(split)
    present = rows[cache.rows_for(index.table["image"].to_numpy()[rows]) >= 0]
    return describe_data(index, present, index.root) if present.size else None


class _Gallery:
    """Draws the first ``per_kind`` cases of each kind into ``folder/<kind>/``."""

    def __init__(self, folder: Path | None, *, per_kind: int) -> None:
        self.folder = folder
        self.per_kind = per_kind
        self.files: dict[str, list[str]] = {kind: [] for kind in GALLERY_KINDS}

    def offer(self, case: LocalizationCase, image: np.ndarray, heat: np.ndarray) -> None:
        if self.folder is None:
            return
        hit, fp = case_outcome(case, kind="iobb", threshold=labels.LOC_GALLERY_IOBB)
        wanted = [k for k, test in GALLERY_KINDS.items() if test(hit, fp) and len(self.files[k]) < self.per_kind]
        if not wanted:
            return
        from cxrmtl.localize.gallery import render_overlay, write_png

        matched = iobb(case.pred, case.gt).max(axis=1) > labels.LOC_GALLERY_IOBB if len(case.pred) else []
        picture = render_overlay(image, heat, gt=case.gt, pred=case.pred, matched=list(matched),
                                 title=f"{case.finding} {case.image}")
        for kind in wanted:
            name = f"{kind}/{Path(case.image).stem}_{case.finding}.png"
            write_png(self.folder / name, picture)
            self.files[kind].append(name)


def localization_markdown(result: LocalizationResult) -> str:
    """localization.md: the method in one paragraph, the per-finding summary next to Wang et al.'s published
    accuracies (labelled when the data is not theirs), the T(IoBB) table, the pointing game, the T(IoU) table."""
    data = result.data
    banner = [f"> **{data.banner}**", ""] if data is not None and data.banner else []
    reference = labels.WANG_IOBB05_ACCURACY if result.comparable else None
    pointing = result.pointing if result.pointing is not None else pointing_game([])
    return "\n".join([
        f"# Localisation ({_title(result)})",
        "",
        *banner,
        f"Data: {data.label if data is not None else 'no readable images of this split'}.",
        f"Split `{result.split}`, head `{result.task}`: {len(result.cases)} (image, finding) cases with a true box"
        + (f"; {result.skipped} boxed images left out (missing, unreadable, or boxes outside the cached square)."
           if result.skipped else "."),
        f"Heatmaps: {_title(result)} from `{result.layer or 'the default layer'}` (`cxrmtl localize --cam`, "
        f"`--layer`). Heatmap -> boxes, rule `{result.box_rule}` (`--box-rule`): {box_rule(result.box_rule).summary}. "
        "A box is correct when its overlap with a true box is strictly above T (Wang et al. 2017).",
        "",
        "## Per finding at T(IoBB)=0.5",
        "",
        finding_table(result.iobb, pointing, comparable=result.comparable).rstrip("\n"),
        "",
        _wang_note(result) + " AFP: false boxes per case. Pointing: share of cases whose heatmap maximum lies inside a "
        "true box.",
        "",
        "## Accuracy at T(IoBB)",
        "",
        accuracy_table(result.iobb, reference=reference).rstrip("\n"),
        "",
        "AFP: false boxes per case." + _mean_line(result),
        "",
        "## Pointing game",
        "",
        pointing_table(pointing).rstrip("\n"),
        "",
        "A hit: the heatmap's maximum lies inside a true box of the finding (Zhang et al., ECCV 2016; no tolerance).",
        "",
        "## Accuracy at T(IoU)",
        "",
        iou_table(result.iou).rstrip("\n"),
        "",
    ])


def _wang_note(result: LocalizationResult) -> str:
    """What Wang et al.'s column is and how far it may be compared with ours."""
    rule = ("" if result.box_rule == "wang" else
            f" Their boxes came from their rule (`--box-rule wang`), ours from `{result.box_rule}`.")
    if result.comparable:
        return f"Wang 2017 @0.5: {WANG_SOURCE}; same images and scoring.{rule}"
    what = result.data.label if result.data is not None else f"split {result.split}"
    return (f"Wang 2017 @0.5: {WANG_SOURCE}. Listed for scale only, not as a comparison: our numbers are on {what}, "
            f"theirs on the real NIH test images.{rule}")


def _title(result: LocalizationResult) -> str:
    return labels.LOC_CAM_TITLES.get(result.cam, result.cam)


def _mean_line(result: LocalizationResult) -> str:
    acc, afp = result.mean_iobb05, result.mean_afp05
    if acc is None:
        return ""
    count = len(result.iobb["finding"].unique())
    return f" Mean over the {count} boxed findings at T(IoBB)=0.5: accuracy {acc:.3f}, AFP {afp:.2f}."


def write_outputs(result: LocalizationResult, out: Path) -> dict[str, Path]:
    """localization.json, localization.md and localization_section.json (for ``cxrmtl evaluate --section``)."""
    from cxrmtl.fsio import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "localization.json", "markdown": out / "localization.md",
             "section": out / "localization_section.json"}
    atomic_write_text(paths["json"], json.dumps(result.to_json(), indent=2) + "\n")
    atomic_write_text(paths["markdown"], localization_markdown(result))
    section = localization_section(result, gallery_dir=out / "gallery")
    atomic_write_text(paths["section"], json.dumps(section.to_json()) + "\n")
    return paths


def localization_section(result: LocalizationResult, *, gallery_dir: Path | None = None, per_kind: int = 2) -> Any:
    """The localisation as a report Section, with the first ``per_kind`` gallery pictures of each kind."""
    import html

    from cxrmtl.report.render import Figure, Section, html_table

    markdown = localization_markdown(result).split("\n", 2)[2]  # drop the top-level heading
    intro = markdown.split("\n\n## ")[0]
    banner = result.data.banner if result.data is not None else ""
    body = [f'<div class="banner {"danger" if result.data.kind == "phantom" else "warn"}">{html.escape(banner)}</div>'
            if banner else ""]
    body += [f"<p>{html.escape(line)}</p>" for line in intro.splitlines() if line and not line.startswith("> ")]
    reference = labels.WANG_IOBB05_ACCURACY if result.comparable else None
    pointing = result.pointing if result.pointing is not None else pointing_game([])
    body.append("<h3>Per finding at T(IoBB)=0.5, next to Wang et al. 2017</h3>")
    body.append(html_table(*finding_rows(result.iobb, pointing, comparable=result.comparable))
                if not result.iobb.empty else "<p>no cases</p>")
    body.append(f"<p>{html.escape(_wang_note(result))}</p>")
    for heading, frame, rows_of in (("Accuracy at T(IoBB)", result.iobb,
                                     lambda f: accuracy_rows(f, reference=reference)),
                                    ("Pointing game (heatmap maximum inside a true box)", pointing,
                                     pointing_rows),
                                    ("Accuracy at T(IoU), cells: accuracy (AFP)", result.iou, iou_rows)):
        body.append(f"<h3>{html.escape(heading)}</h3>")
        body.append(html_table(*rows_of(frame)) if not frame.empty else "<p>no cases</p>")
    figures = []
    if gallery_dir is not None:
        for kind, names in result.gallery.items():
            for name in names[:per_kind]:
                png = (gallery_dir / name).read_bytes()
                figures.append(Figure(caption=f"{kind.replace('_', ' ')}: {Path(name).stem}", png=png,
                                      name=f"loc_{kind}_{Path(name).stem}"))
    return Section(title=f"Localisation ({_title(result)})", markdown=markdown, html="".join(body),
                   figures=tuple(figures),
                   note=f"{result.data.label if result.data else 'split ' + result.split}, "
                        f"{len(result.cases)} boxed cases")
