"""Tests of the built-in phantom (cxrmtl.phantom.generate): statistics, layout, determinism, signatures, boxes."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrmtl.data.nih import load_index
from cxrmtl.errors import ConfigError, DataLayoutError
from cxrmtl.labels import (
    BBOX_FINDINGS,
    FINDING_INDEX,
    FINDINGS,
    NIH_IMAGE_SIZE,
    NIH_NUM_IMAGES,
    PHANTOM_BOOSTED_MIN_PREVALENCE,
    TEST_LIST,
    TRAIN_VAL_LIST,
)
from cxrmtl.phantom import generate as phantom
from cxrmtl.phantom.findings import REGISTRY

REPO = Path(__file__).resolve().parents[2]


def _sigma4(p: np.ndarray, n: int) -> np.ndarray:
    return 4.0 * np.sqrt(p * (1 - p) / n) + 1e-4


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom written once for the layout tests (64 px keeps it fast)."""
    out = tmp_path_factory.mktemp("phantom") / "nih"
    phantom.write_phantom(out, patients=14, size=64, seed=3, workers=1, box_share=1.0)
    return out


def test_stats_table_is_aggregate_and_matches_labels() -> None:
    stats = phantom.load_stats()
    assert stats["findings"] == list(FINDINGS)
    assert stats["num_images"] == NIH_NUM_IMAGES
    assert sum(stats["combos"].values()) == NIH_NUM_IMAGES
    assert "Image Index" not in stats["combos"] and not any(".png" in k for k in stats["combos"])


def test_stats_header_is_the_real_header(nih_shared: Path) -> None:
    with gzip.open(nih_shared / "Data_Entry_2017_v2020.csv.gz", "rt") as fh:
        real = fh.readline().rstrip("\n")
    assert ",".join(phantom.load_stats()["header"]) == real


def test_real_prevalence_and_cooccurrence_follow_the_table() -> None:
    plan = phantom.sample_plan(patients=12_000, seed=1, prevalence="real", label_noise=0.0)
    stats = phantom.load_stats()
    n = len(plan)
    expected = np.array([stats["prevalence"][f] for f in FINDINGS])
    observed = plan.truth.mean(0)
    assert np.all(np.abs(observed - expected) <= _sigma4(expected, n)), (observed, expected)
    assert np.array_equal(plan.labels, plan.truth)  # no noise asked
    pair = np.array(stats["cooccurrence"], dtype=np.float64) / stats["num_images"]
    seen = plan.truth.T.astype(np.int64) @ plan.truth.astype(np.int64) / n
    assert np.all(np.abs(seen - pair) <= _sigma4(pair, n))


def test_boosted_lifts_rare_findings_and_keeps_observed_combinations() -> None:
    plan = phantom.sample_plan(patients=3_000, seed=2, prevalence="boosted", label_noise=0.0)
    n = len(plan)
    floor = PHANTOM_BOOSTED_MIN_PREVALENCE
    assert np.all(plan.truth.mean(0) >= floor - _sigma4(np.full(14, floor), n))
    observed = set(phantom.load_stats()["combos"])
    combos = {"|".join(FINDINGS[j] for j in np.flatnonzero(row)) for row in plan.truth}
    assert combos <= observed  # only real label combinations: co-occurrence structure kept


def test_boost_weights_scale_whole_combinations() -> None:
    names = [(), ("Hernia",), ("Hernia", "Effusion"), ("Effusion",)]
    weights = np.array([900.0, 1.0, 1.0, 98.0])
    boosted = phantom.boost_weights(names, weights, floor=0.05)
    prev_hernia = boosted[1:3].sum() / boosted.sum()
    assert prev_hernia >= 0.05
    assert boosted[1] / boosted[2] == pytest.approx(weights[1] / weights[2])  # Hernia combos scaled together


def test_label_noise_drops_and_adds_positives_at_the_asked_rate() -> None:
    plan = phantom.sample_plan(patients=3_000, seed=4, prevalence="boosted", label_noise=0.2)
    pos = plan.truth == 1
    dropped = (plan.labels[pos] == 0).mean()
    added = ((plan.labels == 1) & ~pos).sum() / pos.sum()
    assert dropped == pytest.approx(0.2, abs=0.02)
    assert added == pytest.approx(0.2, abs=0.03)


def test_metadata_patients_followups_split() -> None:
    plan = phantom.sample_plan(patients=3_000, seed=5)
    t = plan.table
    assert t["patient_id"].nunique() == 3_000
    assert len(t) / 3_000 == pytest.approx(112_120 / 30_805, rel=0.15)
    assert (t.groupby("patient_id")["follow_up"].agg(lambda s: list(s) == list(range(len(s))))).all()
    assert (t.groupby("patient_id")["age"].agg(lambda s: s.is_monotonic_increasing)).all()
    assert set(t["sex"]) == {0, 1} and set(t["view"]) == {0, 1}
    assert (t["view"] == 1).mean() == pytest.approx(phantom.load_stats()["ap_share"], abs=0.05)
    by_patient = t.groupby("patient_id")["split"].nunique()
    assert (by_patient == 1).all()  # patient-disjoint
    assert (t["split"] == "test").mean() == pytest.approx(25_596 / 112_120, abs=0.03)
    assert t["age"].between(0, 95).all()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("patients", 0),
        ("size", 8),
        ("difficulty", 1.0),
        ("label_noise", 0.9),
        ("prevalence", "rare"),
        ("box_share", 2.0),
    ],
)
def test_bad_options_raise_config_error_naming_the_option(option: str, value: object, tmp_path: Path) -> None:
    kwargs = {"patients": 2, "size": 64, "difficulty": 0.5, "label_noise": 0.0, "prevalence": "real", "box_share": 0.5}
    kwargs[option] = value
    with pytest.raises(ConfigError, match=option):
        phantom.write_phantom(tmp_path / "out", workers=1, **kwargs)
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(DataLayoutError, match="not empty"):
        phantom.write_phantom(tmp_path, patients=1, size=64, workers=1)
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_layout_is_the_nih_release(written: Path) -> None:
    files = sorted(p.name for p in written.iterdir())
    assert files[:2] == ["BBox_List_2017.csv", "Data_Entry_2017.csv"]
    assert {TEST_LIST, TRAIN_VAL_LIST} <= set(files)
    folders = [f for f in files if f.startswith("images_")]
    assert folders[0] == "images_001" and len(folders) <= 12
    pngs = sorted(written.glob("images_*/images/*.png"))
    image = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.shape == (64, 64)  # 8-bit gray
    for name in (TEST_LIST, TRAIN_VAL_LIST):
        text = (written / name).read_text()
        assert not text.endswith("\n") and all(n.endswith(".png") for n in text.split("\n"))
    assert (written / "BBox_List_2017.csv").read_text().startswith("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    assert not list(written.rglob(".tmp*")) and not list(written.rglob("*.tmp"))


def test_load_index_accepts_the_phantom_as_the_real_release(written: Path) -> None:
    index = load_index(written)
    entry = (written / "Data_Entry_2017.csv").read_text().splitlines()
    assert len(index) == len(entry) - 1
    assert (index.table["path"] != "").all()  # every image found
    assert set(index.table["split"]) <= {"train", "val", "test"}
    assert index.findings.shape == (len(index), 14)
    assert len(index.boxes) > 0 and set(index.boxes["finding"]) <= set(BBOX_FINDINGS)
    assert (index.boxes[["x", "y"]] >= 0).all().all()
    assert ((index.boxes["x"] + index.boxes["w"]) <= 64).all() and ((index.boxes["y"] + index.boxes["h"]) <= 64).all()
    plan = phantom.sample_plan(patients=14, seed=3, box_share=1.0)
    assert np.array_equal(index.findings, plan.labels)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path, written: Path) -> None:
    phantom.write_phantom(tmp_path / "two", patients=14, size=64, seed=3, workers=2, box_share=1.0)
    assert _digest(tmp_path / "two") == _digest(written)
    phantom.write_phantom(tmp_path / "other", patients=14, size=64, seed=4, workers=1, box_share=1.0)
    assert _digest(tmp_path / "other") != _digest(written)


def test_folder_of_scales_to_the_kaggle_layout() -> None:
    assert phantom.folder_of(0, NIH_NUM_IMAGES) == "images_001"
    assert phantom.folder_of(NIH_NUM_IMAGES - 1, NIH_NUM_IMAGES) == "images_012"
    assert phantom.folder_of(9_999, 200_000) == "images_001" and phantom.folder_of(10_000, 200_000) == "images_002"
    assert {phantom.folder_of(i, 30) for i in range(30)} == {f"images_{k:03d}" for k in range(1, 11)}


def _pair(finding: str, *, size: int = 192, difficulty: float = 0.2, seed: int = 11):
    base, _ = phantom.render_study(phantom.single_plan(seed=seed), 0, size=size, difficulty=difficulty)
    img, boxes = phantom.render_study(
        phantom.single_plan(findings=(finding,), seed=seed), 0, size=size, difficulty=difficulty
    )
    return base.astype(np.float32), img.astype(np.float32), boxes


@pytest.mark.parametrize("finding", FINDINGS)
def test_every_finding_leaves_a_visible_signature(finding: str) -> None:
    base, img, boxes = _pair(finding)
    diff = np.abs(img - base)  # anatomy and noise are identical otherwise
    assert diff.max() > 20 and (diff > 4).sum() >= 100
    assert bool(boxes) == (finding in BBOX_FINDINGS)


@pytest.mark.parametrize("finding", [f for f in BBOX_FINDINGS if f != "Atelectasis"])
def test_box_encloses_the_planted_lesion(finding: str) -> None:
    base, img, boxes = _pair(finding, seed=5)
    diff = np.abs(img - base)
    inside = np.zeros_like(diff, dtype=bool)
    for _, x, y, w, h in boxes:
        pad = 4  # blur spreads the lesion edge a few pixels beyond the drawn shape
        inside[max(0, int(y) - pad) : int(y + h) + pad, max(0, int(x) - pad) : int(x + w) + pad] = True
    assert diff[inside].sum() / diff.sum() > 0.85


def test_atelectasis_box_lies_in_the_lower_lung() -> None:
    _, _, boxes = _pair("Atelectasis")
    (_, x, y, w, h), *_ = boxes
    assert 0.45 * 192 < y + h / 2 < 0.8 * 192 and x > 0 and x + w < 192


def test_cardiomegaly_widens_the_heart_beyond_half_the_thorax() -> None:
    plan = phantom.single_plan(findings=("Cardiomegaly",), seed=1)
    params = phantom.anatomy.sample_params(
        sex=0, age=50, view=0, patient_rng=np.random.default_rng(0), rng=np.random.default_rng(1)
    )
    assert params.ctr < 0.5
    REGISTRY["Cardiomegaly"].adjust(params, np.random.default_rng(2), 1.0)
    assert params.ctr > 0.5
    _, boxes = phantom.render_study(plan, 0, size=128)
    assert boxes[0][3] / 128 > 0.5 * 2 * params.lung_half * 0.9


def test_difficulty_scales_conspicuity() -> None:
    diffs = [np.abs(np.subtract(*_pair("Mass", difficulty=d, seed=8)[:2])).sum() for d in (0.1, 0.5, 0.9)]
    assert diffs[0] > diffs[1] > diffs[2] > 0


def _chest(*, age: float = 40, view: int = 0, **changes: object) -> phantom.anatomy.Chest:
    params = phantom.anatomy.sample_params(
        sex=0, age=age, view=view, patient_rng=np.random.default_rng(0), rng=np.random.default_rng(1)
    )
    return phantom.anatomy.render_chest(dataclasses.replace(params, **changes), width=128, rng=np.random.default_rng(2))


def test_sex_age_view_change_the_anatomy() -> None:
    male, female = _chest(), _chest(sex=1)  # same body: only the sex-specific anatomy differs
    extra = female.density - male.density
    assert extra.min() >= -1e-6 and extra.sum() > 0
    assert extra[int(0.4 * 128) : int(0.8 * 128)].sum() / extra.sum() > 0.9  # breast shadows: lower zones
    young, old = _chest(age=25), _chest(age=85)
    assert old.density.sum() < young.density.sum()  # bone mineral density falls with age
    pa, ap = _chest(), _chest(view=1)
    assert ap.heart_box[2] > pa.heart_box[2] * 1.05  # AP magnifies the heart (ellipse axes x1.15)
    images = [
        phantom.render_study(phantom.single_plan(view=v, seed=2), 0, size=96)[0].astype(np.float32)
        for v in ("PA", "AP")
    ]
    noise = [np.abs(cv2.Laplacian(im, cv2.CV_32F)).mean() for im in images]
    assert noise[1] > noise[0]  # portable AP films are noisier


def test_any_size_renders_and_default_is_nih_size() -> None:
    for size in (40, 100, 300):
        image, _ = phantom.render_study(phantom.single_plan(), 0, size=size)
        assert image.shape == (size, size) and image.dtype == np.uint8 and image.std() > 10
    assert NIH_IMAGE_SIZE == 1024


def test_single_plan_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match="Nodules"):
        phantom.single_plan(findings=("Nodules",))
    with pytest.raises(ConfigError, match="view"):
        phantom.single_plan(view="LL")


def test_registry_covers_every_finding() -> None:
    assert set(REGISTRY) == set(FINDINGS)
    assert all(REGISTRY[f].name == f for f in FINDINGS)
    assert FINDING_INDEX["Hernia"] == 13


@pytest.mark.slow
def test_learnability_small_resnet_reaches_the_target_band() -> None:
    """ResNet-18 on ~1,900 boosted phantom images at 128 px, 3 epochs: mean AUROC 0.80-0.97, every finding > 0.65."""
    spec = importlib.util.spec_from_file_location("learnability", REPO / "bench" / "learnability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    torch.set_num_threads(2)
    result = module.run(workers=2)
    assert 0.80 <= result["mean"] <= 0.97, result["auroc"]
    assert result["min"] > 0.65, result["auroc"]


def test_derive_script_aggregates_a_data_entry_table() -> None:
    import pandas as pd

    spec = importlib.util.spec_from_file_location("derive", REPO / "scripts" / "derive_phantom_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    header = phantom.load_stats()["header"]
    rows = [
        ["1_0.png", "Effusion|Atelectasis", 0, 1, 60, "M", "PA", 2500, 2048, 0.168, 0.168],
        ["1_1.png", "No Finding", 1, 1, 61, "M", "AP", 2500, 2048, 0.168, 0.168],
        ["2_0.png", "Hernia", 0, 2, 30, "F", "PA", 2992, 2991, 0.143, 0.143],
        ["3_0.png", "No Finding", 0, 3, 40, "F", "PA", 2500, 2048, 0.168, 0.168],
    ]
    stats = module.derive(pd.DataFrame(rows, columns=header))
    assert stats["combos"] == {"": 2, "Atelectasis|Effusion": 1, "Hernia": 1}
    assert stats["prevalence"]["Effusion"] == 0.25 and stats["prevalence"]["Hernia"] == 0.25
    assert stats["images_per_patient"] == {1: 2, 2: 1}
    assert stats["male_share"] == pytest.approx(1 / 3)
    assert stats["age_hist_first_study"]["M"][60] == 1 and stats["age_hist_first_study"]["F"][30] == 1
    assert stats["ap_share"] == 0.25 and stats["geometries"][0] == [2500.0, 2048.0, 0.168, 0.168, 3]
    co = np.array(stats["cooccurrence"])
    assert co[FINDING_INDEX["Atelectasis"], FINDING_INDEX["Effusion"]] == 1 and co.trace() == 3
