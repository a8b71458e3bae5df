"""Heatmap overlays as PNG: the image, the Grad-CAM map in colour, true boxes and predicted boxes.

Colours (BGR for OpenCV): true boxes green; predicted boxes that match a true box (IoBB above the gallery
threshold) yellow; predicted boxes that match nothing (false positives) red. Small cache images are enlarged (nearest
neighbour for the pixels, so nothing is invented) to at least ``MIN_SIDE`` pixels so that the boxes stay readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrmtl.errors import EvaluationError

MIN_SIDE = 256
HEAT_ALPHA = 0.45  # share of the colour map in the blend: the anatomy must stay visible beneath it
GREEN, YELLOW, RED = (0, 200, 0), (0, 220, 255), (0, 0, 255)


def render_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    gt: np.ndarray,
    pred: np.ndarray,
    matched: Sequence[bool],
    title: str = "",
) -> np.ndarray:
    """A BGR uint8 picture of one case; boxes are x, y, w, h in the image's pixels."""
    import cv2

    if image.ndim != 2 or image.dtype != np.uint8:
        raise EvaluationError(f"overlay image: expected a 2-D uint8 array, got {image.dtype} {image.shape}")
    if heatmap.shape != image.shape:
        raise EvaluationError(f"overlay heatmap: shape {heatmap.shape} differs from the image {image.shape}")
    if len(matched) != len(pred):
        raise EvaluationError(f"overlay: {len(matched)} match flags for {len(pred)} predicted boxes")
    scale = max(1, int(np.ceil(MIN_SIDE / max(image.shape))))
    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    heat = np.clip(np.nan_to_num(heatmap, nan=0.0), 0.0, 1.0)
    heat_big = cv2.resize((heat * 255).astype(np.uint8), big.shape[::-1], interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(heat_big, cv2.COLORMAP_JET)
    canvas = cv2.addWeighted(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR), 1.0 - HEAT_ALPHA, colour, HEAT_ALPHA, 0.0)
    for box in np.asarray(gt).reshape(-1, 4):
        _rect(canvas, box * scale, GREEN)
    for box, hit in zip(np.asarray(pred).reshape(-1, 4), matched, strict=True):
        _rect(canvas, box * scale, YELLOW if hit else RED)
    if title:
        cv2.putText(canvas, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def _rect(canvas: np.ndarray, box: np.ndarray, colour: tuple[int, int, int]) -> None:
    import cv2

    x, y, w, h = (int(np.rint(v)) for v in box)
    cv2.rectangle(canvas, (x, y), (x + max(w, 1) - 1, y + max(h, 1) - 1), colour, 1)


def png_bytes(picture: np.ndarray) -> bytes:
    """Encode a BGR or gray uint8 picture as PNG."""
    import cv2

    ok, buffer = cv2.imencode(".png", picture)
    if not ok:
        raise EvaluationError("overlay: OpenCV could not encode the PNG")
    return buffer.tobytes()


def write_png(path: Path, picture: np.ndarray) -> Path:
    """Write a PNG atomically (temporary name, then rename): an interrupted gallery never holds half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(png_bytes(picture))
    tmp.replace(path)
    return path
