"""Grad-CAM overlays of the positive findings of one predicted image (``cxrmtl predict --heatmaps DIR``).

For every finding called positive at the run's validation threshold, Grad-CAM (``localize.cam.grad_cam``) explains
that finding's logit on the image the network saw (the preprocessed S x S square); the overlay is drawn with the
gallery's renderer (``localize.gallery.render_overlay``, no boxes) and written as ``<stem>_<finding>.png``. Without
thresholds no finding is positive and nothing is drawn: thresholds are never invented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrmtl.localize.cam import grad_cam
from cxrmtl.localize.gallery import render_overlay, write_png


def finding_columns(tasks: Sequence[Any]) -> dict[str, tuple[str, int]]:
    """Finding name -> (task name, column) of the run's finding heads (first task wins for a repeated name)."""
    out: dict[str, tuple[str, int]] = {}
    for task in tasks:
        if task.target == "findings":
            for k, name in enumerate(task.output_names):
                out.setdefault(name, (task.name, k))
    return out


def positive_findings(result: Mapping[str, Any]) -> list[str]:
    """Findings a result calls positive, in the run's order."""
    return [name for name, point in result.get("findings", {}).items() if point.get("positive") is True]


def positive_heatmaps(predictor: Any, image: np.ndarray, result: Mapping[str, Any], *, layer: str | None = None
                      ) -> dict[str, np.ndarray]:
    """Finding -> Grad-CAM map (S, S) in [0, 1] for each positive finding of ``result`` (one pass per task)."""
    columns = finding_columns(predictor.tasks)
    wanted = [name for name in positive_findings(result) if name in columns]
    maps: dict[str, np.ndarray] = {}
    for task in dict.fromkeys(columns[n][0] for n in wanted):
        names = [n for n in wanted if columns[n][0] == task]
        x = predictor.normalize([image] * len(names))
        cams = grad_cam(predictor.model, x, task=task, columns=[columns[n][1] for n in names], layer=layer)
        maps.update(zip(names, cams, strict=True))
    return maps


def write_positive_overlays(predictor: Any, image: np.ndarray, result: Mapping[str, Any], out_dir: Path, *,
                            stem: str, layer: str | None = None) -> list[Path]:
    """Write one overlay PNG per positive finding into ``out_dir``; returns the paths (empty when none)."""
    written = []
    empty = np.zeros((0, 4))
    for name, heat in positive_heatmaps(predictor, image, result, layer=layer).items():
        p = result["findings"][name]["probability"]
        picture = render_overlay(image, heat, gt=empty, pred=empty, matched=[], title=f"{name} p={p:.2f}")
        written.append(write_png(Path(out_dir) / f"{stem}_{name}.png", picture))
    return written
