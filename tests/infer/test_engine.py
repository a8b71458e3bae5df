"""Predictor: one preprocessing for cache and predict, result schema, operating points, files good and bad."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from predictkit import write_bad_files
from trainkit import tiny_config, write_tiny_nih

from cxrmtl import labels as L
from cxrmtl.data.cache import build_cache, open_cache
from cxrmtl.data.imageio import read_gray
from cxrmtl.data.nih import load_index
from cxrmtl.errors import RunError
from cxrmtl.infer.engine import FileResult, Predictor, choose_backend, read_data_kind
from cxrmtl.runs.operating import Thresholds, apply_temperature, save_thresholds
from cxrmtl.train.loop import train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("engine")
    nih = write_tiny_nih(base / "nih", seed=2)
    train(tiny_config("train.epochs=1"), data_root=nih, out=base / "run", device="cpu")
    return base / "run", nih


def test_preprocess_is_the_cache_preprocessing(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """The same PNG through build_cache and through Predictor.preprocess gives the same uint8 pixels."""
    run, _ = tiny
    root = write_tiny_nih(tmp_path / "nih", patients=4, size=48, seed=5)
    # A non-square 16-bit image replaces one file: to_uint8, centre crop and INTER_AREA are all exercised.
    name = sorted((root / "images").glob("*.png"))[0]
    wide = (np.random.default_rng(0).random((60, 90)) * 50_000 + 1000).astype(np.uint16)
    Image.fromarray(wide).save(name)
    assert read_gray(name).dtype == np.uint16
    build_cache(load_index(root), tmp_path / "cache", size=32, workers=1, progress=False)
    view = open_cache(tmp_path / "cache")
    predictor = Predictor.from_run(run, backend="torch")
    for path in sorted((root / "images").glob("*.png")):
        cached = view.images[view.rows_for([path.name])[0]]
        assert np.array_equal(predictor.preprocess(read_gray(path)), cached), path.name


def test_predict_arrays_schema_without_thresholds(tiny: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    run, nih = tiny
    with caplog.at_level(logging.WARNING, logger="cxrmtl.infer.engine"):
        predictor = Predictor.from_run(run, backend="torch")
    assert sum("no thresholds.json" in r.message for r in caplog.records) == 1
    assert predictor.backend == "torch" and predictor.image_size == 32 and predictor.finding_names == L.FINDINGS
    assert predictor.data_kind == "subset"  # RUN/data.json, written by train: a tiny NIH-layout folder
    images = [predictor.preprocess(read_gray(p)) for p in sorted((nih / "images").glob("*.png"))[:3]]
    results = predictor.predict_arrays(images)
    assert len(results) == 3
    r = results[0]
    assert set(r) == {"findings", "abnormal", "age_years", "sex", "view", "calibrated", "threshold_method"}
    assert list(r["findings"]) == list(L.FINDINGS)
    assert r["findings"]["Effusion"]["threshold"] is None and r["findings"]["Effusion"]["positive"] is None
    assert 0 < r["findings"]["Effusion"]["probability"] < 1 and 0 < r["sex"]["p_female"] < 1
    assert 0 < r["view"]["p_ap"] < 1 and r["age_years"] > 0
    assert r["calibrated"] is False and r["threshold_method"] is None
    # One forward per batch: the batch gives the numbers of the images one at a time.
    single = predictor.predict_arrays(images[1:2])[0]
    assert single["abnormal"]["probability"] == pytest.approx(results[1]["abnormal"]["probability"], abs=1e-6)
    assert predictor.predict_arrays([]) == []
    with pytest.raises(RunError, match="preprocessed"):
        predictor.predict_arrays([np.zeros((10, 10), np.uint8)])


def test_thresholds_and_temperatures_are_applied(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    run, nih = tiny
    copy = tmp_path / "run"
    import shutil

    shutil.copytree(run, copy)
    youden = {"findings": dict.fromkeys(L.FINDINGS, 0.5) | {"Hernia": None}, "abnormal": {"abnormal": 0.4}}
    temps = {"findings": dict.fromkeys(L.FINDINGS, 2.0), "abnormal": {"abnormal": None}, "sex": {"sex": 0.5}}
    save_thresholds(copy, Thresholds(methods={"youden": youden}, temperatures=temps), code_version="test")
    (copy / "data.json").write_text(json.dumps({"data_kind": "phantom"}))
    predictor = Predictor.from_run(copy, backend="torch")
    assert predictor.calibrated and predictor.data_kind == "phantom"
    images = [predictor.preprocess(read_gray(p)) for p in sorted((nih / "images").glob("*.png"))[:4]]
    raw = predictor.predict_outputs(images)
    results = predictor.predict_arrays(images)
    for b, r in enumerate(results):
        p = raw["findings"][b, L.FINDING_INDEX["Effusion"]]
        eff = r["findings"]["Effusion"]
        assert eff["probability"] == pytest.approx(float(apply_temperature(np.array([p]), 2.0)[0]), abs=1e-12)
        assert eff["positive"] is bool(p >= 0.5)
        assert eff["threshold"] == pytest.approx(0.5)  # logit(0.5) = 0: T leaves it
        assert r["findings"]["Hernia"]["threshold"] is None and r["findings"]["Hernia"]["positive"] is None
        assert r["abnormal"]["probability"] == pytest.approx(float(raw["abnormal"][b, 0]), abs=1e-7)
        assert r["abnormal"]["positive"] is bool(raw["abnormal"][b, 0] >= 0.4)
        assert r["sex"]["p_female"] == pytest.approx(float(apply_temperature(raw["sex"][b], 0.5)[0]))
        assert r["age_years"] == pytest.approx(float(raw["age"][b, 0]), abs=1e-4)
        assert r["calibrated"] is True and r["threshold_method"] == "youden"


def test_predict_files_keeps_order_and_reports_bad_files(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    run, nih = tiny
    predictor = Predictor.from_run(run, backend="torch")
    bad = write_bad_files(tmp_path / "bad")
    goods = sorted((nih / "images").glob("*.png"))[:5]
    paths = [goods[0], tmp_path / "bad" / "truncated.png", goods[1], goods[2], tmp_path / "bad" / "text.png",
             tmp_path / "bad" / "empty.png", goods[3], tmp_path / "bad" / "nopixels.dcm", goods[4],
             tmp_path / "missing.png"]
    out = list(predictor.predict_files(paths, batch_size=2, workers=2))
    assert [r.path for r in out] == paths and all(isinstance(r, FileResult) for r in out)
    for r in out:
        if r.path in goods:
            assert r.error is None and r.result is not None
        else:
            assert r.result is None and r.error and "\n" not in r.error
            assert bad.get(r.path.name, "") in r.error.lower()
    whole = predictor.predict_arrays([predictor.preprocess(read_gray(p)) for p in goods])
    got = [r.result for r in out if r.result is not None]
    for a, b in zip(got, whole, strict=True):
        assert a["findings"]["Effusion"]["probability"] == pytest.approx(b["findings"]["Effusion"]["probability"],
                                                                         abs=1e-6)
    with pytest.raises(RunError, match="at least 1"):
        list(predictor.predict_files(paths, batch_size=0))


def test_backend_choice_and_data_kind(tmp_path: Path) -> None:
    assert choose_backend("torch", device="cpu") == "torch"
    assert choose_backend("auto", device="cuda") == "torch"
    assert choose_backend("auto", device="cpu") in ("torch", "onnx")
    with pytest.raises(RunError, match="backend"):
        Predictor.from_run(tmp_path, backend="tensorflow")
    assert read_data_kind(tmp_path) == "unknown"
    phantom = tmp_path / "ph"
    phantom.mkdir()
    (phantom / "phantom.json").write_text("{}")
    (tmp_path / "data.json").write_text(json.dumps({"root": str(phantom)}))
    assert read_data_kind(tmp_path) == "phantom"
    (tmp_path / "data.json").write_text("{oops")
    with pytest.raises(RunError, match=r"data\.json"):
        read_data_kind(tmp_path)
