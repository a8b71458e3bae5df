"""Localisation of a real (tiny, briefly trained) run on the phantom: cases, scores, gallery PNGs, CLI outputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrmtl import labels
from cxrmtl.config import Config, from_dict

pytestmark = pytest.mark.slow  # trains a model for one step (about 20 s on a loaded 2-core machine)

SIZE = 64


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(phantom root, cache folder, run folder): every boxed phantom image keeps its boxes (box_share 1)."""
    from cxrmtl.phantom.generate import write_phantom
    from cxrmtl.train.loop import train

    base = tmp_path_factory.mktemp("loc")
    root, cache, run = base / "phantom", base / "cache", base / "run"
    write_phantom(root, patients=30, size=SIZE, seed=1, box_share=1.0)
    cfg = from_dict(Config, {
        "data": {"image_size": SIZE, "cache_workers": 1},
        "model": {"backbone": "resnet10t", "channels_last": False},
        "tasks": {"specs": ["findings", "age"]},
        "augment": {"enabled": False},
        "train": {"epochs": 1, "batch_size": 8, "max_steps": 1, "checkpoint_every": 0, "progress": False},
    })
    train(cfg, data_root=root, out=run, cache_dir=cache, device="cpu")
    return root, cache, run


def test_localize_run_scores_every_boxed_test_case_and_draws_the_gallery(tiny_run, tmp_path: Path) -> None:
    from cxrmtl.data.cache import open_cache
    from cxrmtl.data.nih import load_index
    from cxrmtl.infer.predictor import load_run
    from cxrmtl.localize.run import localize_run, write_outputs
    from cxrmtl.report.render import load_section

    root, cache_dir, run = tiny_run
    loaded = load_run(run)
    index = load_index(root)
    test_names = set(index.table["image"].to_numpy()[index.rows("test")])
    expected = {(i, f) for i, f in zip(index.boxes["image"], index.boxes["finding"], strict=True) if i in test_names}
    assert expected, "the phantom should put boxes on test images"
    result = localize_run(loaded, open_cache(cache_dir), index, split="test", batch_size=4,
                          layer="backbone.layer2", gallery_dir=tmp_path / "gallery", gallery_per_kind=2)
    assert {(c.image, c.finding) for c in result.cases} == expected
    assert result.task == "findings" and result.skipped == 0
    boxed = sorted({f for _, f in expected}, key=labels.FINDINGS.index)
    assert result.iobb["finding"].unique().tolist() == boxed
    assert len(result.iobb) == len(boxed) * len(labels.LOC_IOBB_THRESHOLDS)
    assert len(result.iou) == len(boxed) * len(labels.LOC_IOU_THRESHOLDS)
    assert result.iobb["accuracy"].between(0, 1).all() and (result.iobb["afp"] >= 0).all()
    drawn = [name for names in result.gallery.values() for name in names]
    assert drawn and all(len(names) <= 2 for names in result.gallery.values())
    picture = cv2.imread(str(tmp_path / "gallery" / drawn[0]))
    assert picture.shape == (256, 256, 3)  # 64 px enlarged 4x
    paths = write_outputs(result, tmp_path)
    doc = json.loads(paths["json"].read_text())
    assert doc["cases"] == len(expected) and doc["heatmap_thresholds"] == [60, 180]
    section = load_section(paths["section"])
    title = labels.LOC_CAM_TITLES[labels.LOC_DEFAULT_CAM]
    assert section.title == f"Localisation ({title})" and len(section.figures) >= 1 and "<table" in section.html
    assert "Pointing game" in section.html and doc["cam"] == labels.LOC_DEFAULT_CAM
    hits = {row["finding"]: row for row in doc["pointing_game"]}
    assert list(hits) == boxed and all(0 <= row["hit_rate"] <= 1 for row in hits.values())
    assert sum(row["cases"] for row in hits.values()) == len(expected)
    assert 0 <= doc["mean_iobb_0.5"]["accuracy"] <= 1
    text = paths["markdown"].read_text()  # the phantom folder is detected: banner, the paper's column labelled
    assert "> **PHANTOM DATA" in text and "| Wang 2017 @0.5 |" not in text and doc["data"]["kind"] == "phantom"
    assert "real NIH test (not this data)" in text
    assert doc["box_rule"] == result.box_rule == labels.LOC_DEFAULT_BOX_RULE  # the default is recorded
    assert f"rule `{labels.LOC_DEFAULT_BOX_RULE}`" in text
    assert all(len(c.pred) <= labels.LOC_PEAK_MAX_BOXES for c in result.cases)


def test_localize_command_writes_into_the_run(tiny_run) -> None:
    from typer.testing import CliRunner

    from cxrmtl.cli import app

    root, cache_dir, run = tiny_run
    result = CliRunner().invoke(app, ["localize", str(run), "--data", str(root), "--cache", str(cache_dir),
                                      "--gallery", "1"])
    assert result.exit_code == 0, result.output
    out = run / "eval" / "test" / "localization"
    assert (out / "localization.md").is_file() and (out / "localization_section.json").is_file()
    assert sum(1 for _ in (out / "gallery").rglob("*.png")) >= 1
    bad = CliRunner().invoke(app, ["localize", str(run), "--data", str(root), "--split", "holdout"])
    assert bad.exit_code == 2 and "holdout" in bad.output  # --split is a choice: a usage error before any work
    hires = CliRunner().invoke(app, ["localize", str(run), "--data", str(root), "--cache", str(cache_dir),
                                     "--gallery", "0", "--cam", "hirescam", "--out", str(run / "hires")])
    assert hires.exit_code == 0, hires.output
    doc = json.loads((run / "hires" / "localization.json").read_text())
    assert doc["cam"] == "hirescam" and "# Localisation (HiResCAM)" in hires.output
    assert "## Pointing game" in hires.output
    unknown = CliRunner().invoke(app, ["localize", str(run), "--data", str(root), "--cam", "scorecam"])
    assert unknown.exit_code == 2 and "scorecam" in unknown.output  # --cam is a choice too
    wang = CliRunner().invoke(app, ["localize", str(run), "--data", str(root), "--cache", str(cache_dir),
                                    "--gallery", "0", "--box-rule", "wang", "--out", str(run / "wang")])
    assert wang.exit_code == 0, wang.output
    doc = json.loads((run / "wang" / "localization.json").read_text())
    assert doc["box_rule"] == "wang" and doc["box_rule_params"] == {"thresholds": [60, 180]}
    assert "rule `wang`" in wang.output
    bad_rule = CliRunner().invoke(app, ["localize", str(run), "--data", str(root), "--box-rule", "otsu"])
    assert bad_rule.exit_code == 2 and "otsu" in bad_rule.output


def test_pending_cases_follow_the_head_outputs(tiny_run) -> None:
    from cxrmtl.data.cache import open_cache
    from cxrmtl.data.nih import load_index
    from cxrmtl.localize.run import pending_cases

    root, cache_dir, _ = tiny_run
    index, cache = load_index(root), open_cache(cache_dir)
    only_mass, _ = pending_cases(index, cache, split="test", outputs=["Mass"])
    assert {p.finding for p in only_mass} <= {"Mass"}
    assert all(p.column == 0 and p.cache_row >= 0 for p in only_mass)
    assert all(np.all(p.gt[:, 2:] > 0) for p in only_mass)
