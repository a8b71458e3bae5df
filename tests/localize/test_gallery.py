"""Overlay pictures: boxes in the documented colours at the right (enlarged) places, PNGs written atomically."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrmtl.errors import EvaluationError
from cxrmtl.localize.gallery import GREEN, RED, YELLOW, render_overlay, write_png


def test_render_overlay_draws_boxes_in_their_colours() -> None:
    image = np.zeros((32, 32), dtype=np.uint8)
    heat = np.zeros((32, 32), dtype=np.float32)
    gt = np.array([[2, 2, 10, 10]], dtype=float)
    pred = np.array([[2, 2, 10, 10], [20, 20, 8, 8]], dtype=float)
    picture = render_overlay(image, heat, gt=gt, pred=pred, matched=[True, False])
    assert picture.shape == (256, 256, 3) and picture.dtype == np.uint8  # 32 px enlarged 8x
    # The matched predicted box is drawn after (over) the true box with the same outline: yellow wins there.
    assert tuple(picture[2 * 8, 6 * 8]) == YELLOW
    assert tuple(picture[20 * 8, 24 * 8]) == RED
    only_gt = render_overlay(image, heat, gt=gt, pred=np.zeros((0, 4)), matched=[])
    assert tuple(only_gt[2 * 8, 6 * 8]) == GREEN


@pytest.mark.parametrize(
    ("image", "heat", "matched", "message"),
    [
        (np.zeros((8, 8), np.float32), np.zeros((8, 8)), [], "uint8"),
        (np.zeros((8, 8), np.uint8), np.zeros((4, 4)), [], "differs"),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8)), [True], "match flags"),
    ],
)
def test_render_overlay_rejects_mismatched_input(image, heat, matched, message) -> None:
    with pytest.raises(EvaluationError, match=message):
        render_overlay(image, heat, gt=np.zeros((0, 4)), pred=np.zeros((0, 4)), matched=matched)


def test_write_png_round_trips(tmp_path: Path) -> None:
    picture = np.full((10, 12, 3), 7, dtype=np.uint8)
    path = write_png(tmp_path / "kind" / "x.png", picture)
    assert np.array_equal(cv2.imread(str(path)), picture)
    assert not list((tmp_path / "kind").glob(".*"))  # no temporary file left behind
