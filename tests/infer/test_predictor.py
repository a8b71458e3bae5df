"""load_run + predict_split: a run folder alone rebuilds the model; predictions cover each split row exactly once,
match the training-time validation, and survive a save/load round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from trainkit import tiny_config, write_tiny_nih

from cxrmtl.data.cache import build_cache, open_cache
from cxrmtl.data.nih import load_index
from cxrmtl.distributed import DistContext
from cxrmtl.errors import CheckpointError, RunError
from cxrmtl.infer.predictor import Predictions, load_run, predict_split
from cxrmtl.train.loop import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("pred")
    nih = write_tiny_nih(base / "nih", seed=1)
    cache = base / "cache"
    build_cache(load_index(nih), cache, size=32, workers=1, progress=False)
    cfg = tiny_config("train.epochs=1", "train.ema_decay=0.9", "data.val_fraction=0.25")
    train(cfg, data_root=nih, out=base / "run", cache_dir=cache, device="cpu")
    return base / "run", nih, cache


def test_load_run_rebuilds_model_in_eval_mode(trained: tuple[Path, Path, Path]) -> None:
    run, _, _ = trained
    loaded = load_run(run)
    assert not loaded.model.training
    assert loaded.labels["findings"][7] == "Pneumothorax"
    assert [t.name for t in loaded.tasks] == ["findings", "abnormal", "age", "sex", "view"]
    assert loaded.step == 7


def test_predict_split_matches_validation_and_covers_rows_once(trained: tuple[Path, Path, Path]) -> None:
    run, nih, cache = trained
    loaded = load_run(run)
    cfg = loaded.config
    index = load_index(nih, val_fraction=cfg.data.val_fraction, split_seed=cfg.data.split_seed)
    view = open_cache(cache)
    val = predict_split(loaded, view, index, "val", batch_size=3)
    assert np.array_equal(val.rows, np.sort(index.rows("val")))
    assert val.outputs["findings"].shape == (len(val), 14)
    assert ((val.outputs["sex"] >= 0) & (val.outputs["sex"] <= 1)).all()
    assert val.outputs["age"].min() > -50  # years, not the /100 scaled head output
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    auroc = loaded.tasks[0].metrics(val.outputs["findings"], val.targets["findings"], val.masks["findings"])
    assert auroc["auroc_mean"] == pytest.approx(best["metrics"]["val/findings/auroc_mean"], abs=1e-6)
    test = predict_split(loaded, view, index, "test", batch_size=5)
    assert set(test.rows) == set(index.rows("test")) and not set(test.rows) & set(val.rows)


def test_predictions_round_trip(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    run, nih, cache = trained
    loaded = load_run(run)
    index = load_index(nih, val_fraction=0.25)
    preds = predict_split(loaded, open_cache(cache), index, "val")
    preds.save(tmp_path / "val.npz")
    back = Predictions.load(tmp_path / "val.npz")
    assert back.split == "val" and back.output_names == preds.output_names
    for task in preds.outputs:
        np.testing.assert_array_equal(back.outputs[task], preds.outputs[task])
        np.testing.assert_array_equal(back.masks[task], preds.masks[task])
    np.testing.assert_array_equal(back.patient_ids, preds.patient_ids)
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(RunError, match=r"bad\.npz"):
        Predictions.load(tmp_path / "bad.npz")


def test_gather_drops_padding_duplicates() -> None:
    from cxrmtl.distributed import gather_by_row

    rows = np.array([5, 2, 9, 2])
    arrays = {"x": np.array([[50.0], [20.0], [90.0], [20.0]])}
    got_rows, got = gather_by_row(rows, arrays, DistContext())
    assert got_rows.tolist() == [2, 5, 9] and got["x"].ravel().tolist() == [20.0, 50.0, 90.0]


def test_load_run_errors(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"config\.yaml"):
        load_run(tmp_path)
    with pytest.raises(RunError, match="which"):
        load_run(trained[0], which="median")
    import shutil

    copy = shutil.copytree(trained[0], tmp_path / "copy")
    (copy / "checkpoints" / "best.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match=r"best\.pt"):
        load_run(copy)
    small = tmp_path / "cache16"
    _, nih, _ = trained
    build_cache(load_index(nih), small, size=16, workers=1, progress=False)
    with pytest.raises(RunError, match="16 px"):
        predict_split(load_run(trained[0]), open_cache(small), load_index(nih, val_fraction=0.25), "val")
