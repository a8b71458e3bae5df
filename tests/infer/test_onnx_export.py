"""ONNX export: named outputs, dynamic batch, self-describing metadata, cache freshness, and parity with torch on
real NIH PNGs (max abs difference of every head output <= 1e-4)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from predictkit import write_untrained_run
from trainkit import tiny_config

from cxrmtl import labels as L
from cxrmtl.config import Config, apply_overrides
from cxrmtl.data.imageio import read_gray
from cxrmtl.errors import RunError
from cxrmtl.infer.engine import Predictor
from cxrmtl.infer.onnx_export import EXPORT_OPSET, cached_export, export_onnx, output_name, read_metadata
from cxrmtl.runs.checkpoint import load_run
from cxrmtl.runs.operating import Thresholds, save_thresholds

PARITY_ATOL = 1e-4  # issue 9: max abs logit difference vs torch


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_config("data.image_size=64", "tasks.specs=[findings, 'findings:Pneumothorax', abnormal, age, sex, view]")
    out = write_untrained_run(tmp_path_factory.mktemp("onnx") / "run", cfg)
    th = Thresholds(methods={"youden": {"findings": {"Effusion": 0.4}}}, temperatures={"findings": {"Effusion": 1.5}})
    save_thresholds(out, th, code_version="test")
    return out


def _nih_images(root: Path, n: int) -> list[Path]:
    return sorted((root / "images").glob("*.png"))[:n]


def test_export_names_every_head_and_describes_itself(run: Path, tmp_path: Path) -> None:
    import onnx

    path = export_onnx(load_run(run), tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == ["findings", "findings_Pneumothorax", "abnormal", "age", "sex",
                                                    "view"]
    assert proto.opset_import[0].version == EXPORT_OPSET
    dim = proto.graph.input[0].type.tensor_type.shape.dim
    assert dim[0].dim_param == "batch" and [d.dim_value for d in dim[1:]] == [1, 64, 64]
    meta = read_metadata(path)
    assert meta["finding_names"] == [*L.FINDINGS, "Pneumothorax"]
    assert meta["outputs"]["findings_Pneumothorax"] == {
        "task": "findings:Pneumothorax", "kind": "multilabel", "columns": ["Pneumothorax"],
        "transform": {"kind": "sigmoid", "unit": "probability"}}
    assert meta["outputs"]["age"]["transform"] == {"kind": "affine", "scale": L.AGE_SCALE,
                                                   "offset": L.AGE_PRIOR_YEARS, "unit": "years"}
    assert meta["image_size"] == 64 and meta["normalization"]["mean"] == L.PIXEL_MEAN
    assert meta["normalization"]["std"] == L.PIXEL_STD and "centre square crop" in meta["input"]["preprocessing"]
    assert meta["thresholds"]["youden"]["findings"]["Effusion"] == 0.4 and meta["threshold_method"] == "youden"
    assert meta["temperatures"] == {"findings": {"Effusion": 1.5}} and meta["data_kind"] == "unknown"
    assert meta["exporter"]["mode"] == "torchscript" and meta["code_version"]
    assert output_name("findings:A,B") == "findings_A_B"


def test_onnx_matches_torch_on_real_pngs_with_dynamic_batch(run: Path, nih_shared: Path) -> None:
    torch_p = Predictor.from_run(run, backend="torch")
    onnx_p = Predictor.from_run(run, backend="onnx", threads=1)
    assert onnx_p.backend == "onnx" and (run / "export" / "model-best.onnx").is_file()
    images = [torch_p.preprocess(read_gray(p)) for p in _nih_images(nih_shared, 5)]
    for batch in (images[:1], images):  # batch 1 and 5 through the same graph
        a, b = torch_p.predict_logits(batch), onnx_p.predict_logits(batch)
        assert set(a) == set(b)
        for task in a:
            assert b[task].shape == a[task].shape == (len(batch), a[task].shape[1])
            assert np.abs(a[task] - b[task]).max() <= PARITY_ATOL, task
    ra, rb = torch_p.predict_arrays(images), onnx_p.predict_arrays(images)
    assert ra[0]["findings"]["Effusion"]["probability"] == pytest.approx(
        rb[0]["findings"]["Effusion"]["probability"], abs=1e-4)


@pytest.mark.slow
def test_densenet121_parity_at_224(tmp_path: Path, nih_shared: Path) -> None:
    """The benchmark model: densenet121 @ 224 with every head, on five real NIH PNGs."""
    cfg = apply_overrides(Config(), ["model.backbone=densenet121", "data.image_size=224",
                                     "tasks.specs=[findings, abnormal, age, sex, view]"])
    out = write_untrained_run(tmp_path / "run", cfg)
    torch_p, onnx_p = Predictor.from_run(out, backend="torch"), Predictor.from_run(out, backend="onnx", threads=1)
    images = [torch_p.preprocess(read_gray(p)) for p in _nih_images(nih_shared, 5)]
    a, b = torch_p.predict_logits(images), onnx_p.predict_logits(images)
    assert max(float(np.abs(a[t] - b[t]).max()) for t in a) <= PARITY_ATOL


def test_cached_export_is_reused_until_the_checkpoint_changes(run: Path) -> None:
    loaded = load_run(run)
    first = cached_export(loaded)
    stamp = first.stat().st_mtime_ns
    assert cached_export(loaded) == first and first.stat().st_mtime_ns == stamp
    with open(loaded.checkpoint, "ab") as fh:  # same weights, different bytes: the digest changes
        fh.write(b"\0")
    try:
        os.utime(first, ns=(stamp - 10**9, stamp - 10**9))
        again = cached_export(loaded)
        assert again.stat().st_mtime_ns != stamp - 10**9
    finally:
        with open(loaded.checkpoint, "r+b") as fh:
            fh.truncate(loaded.checkpoint.stat().st_size - 1)
    first.write_bytes(b"garbage")
    assert read_metadata(cached_export(loaded))["format"] == 1  # a damaged cache file is replaced


def test_export_refuses_bad_opset_and_unwritable_target(run: Path, tmp_path: Path) -> None:
    loaded = load_run(run)
    with pytest.raises(RunError, match="opset"):
        export_onnx(loaded, tmp_path / "m.onnx", opset=999)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunError, match="cannot write"):
        export_onnx(loaded, blocker / "m.onnx")
