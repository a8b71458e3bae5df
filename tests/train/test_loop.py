"""The training loop on a tiny NIH-layout folder: run folder contents, logging, selection, weighting methods, CLI;
plus the pieces it is made of (augmentation, schedule, EMA)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from trainkit import tiny_config, write_config
from typer.testing import CliRunner

from cxrmtl.config import AugmentConfig, OptimConfig, config_from_yaml_text
from cxrmtl.data.loader import normalize
from cxrmtl.errors import ConfigError
from cxrmtl.runs.checkpoint import load_checkpoint
from cxrmtl.runs.data import default_cache_dir
from cxrmtl.train.augment import BatchAugment, affine_params, step_generator
from cxrmtl.train.ema import ModelEMA
from cxrmtl.train.loop import train
from cxrmtl.train.optim import WarmupCosine, build_optimizer


@pytest.fixture(scope="module")
def finished_run(tiny_nih: Path, tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("loop") / "run"
    train(tiny_config("train.ema_decay=0.5"), data_root=tiny_nih, out=out, cache_dir=tiny_cache, device="cpu")
    return out


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_run_folder_holds_everything(finished_run: Path) -> None:
    cfg = config_from_yaml_text((finished_run / "config.yaml").read_text(), where="config.yaml")
    assert cfg == tiny_config("train.ema_decay=0.5")
    labels = json.loads((finished_run / "labels.json").read_text())
    assert labels["findings"][0] == "Atelectasis" and len(labels["findings"]) == 14 and labels["age"] == ["age"]
    assert "code_version" in json.loads((finished_run / "version.json").read_text())
    assert any((finished_run / "tb").iterdir()), "TensorBoard event file"
    last = load_checkpoint(finished_run / "checkpoints" / "last.pt")
    for key in ("optimizer", "scheduler", "scaler", "weighting", "loop", "ema", "code_version"):
        assert key in last, key
    assert last["step"] == 14 and last["epoch"] == 2 and last["batch_in_epoch"] == 0
    assert (finished_run / "checkpoints" / "best.pt").is_file()


def test_epoch_records_log_weights_gradnorms_and_metrics(finished_run: Path) -> None:
    epochs = [r for r in _records(finished_run) if r.get("event") == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    for record in epochs:
        for task in ("findings", "abnormal", "age", "sex", "view"):
            assert record[f"train/weight/{task}"] == 1.0
            assert record[f"train/gradnorm/{task}"] > 0
            assert math.isfinite(record[f"train/loss/{task}"])
        assert 0.0 <= record["val/findings/auroc_mean"] <= 1.0
        assert record["val/age/mae_years"] > 0
    end = _records(finished_run)[-1]
    assert end["event"] == "end" and end["select_metric"] == "val/findings/auroc_mean"
    assert end["best_value"] == max(r["val/findings/auroc_mean"] for r in epochs)


def test_training_moves_the_weights_and_ema_lags(finished_run: Path, tiny_nih: Path, tiny_cache: Path,
                                                 tmp_path: Path) -> None:
    last = load_checkpoint(finished_run / "checkpoints" / "last.pt")
    start = tmp_path / "start"
    train(tiny_config("train.ema_decay=0.5", "train.max_steps=1", "optim.lr=1e-9"), data_root=tiny_nih,
          out=start, cache_dir=tiny_cache, device="cpu")
    first = load_checkpoint(start / "checkpoints" / "last.pt")["model"]
    moved = [k for k in first if first[k].dtype.is_floating_point and not torch.equal(first[k], last["model"][k])]
    assert moved, "two epochs of training change the weights"
    differ = [k for k in moved if not torch.equal(last["ema"][k], last["model"][k])]
    assert differ, "the EMA copy is not the raw model"


@pytest.mark.parametrize("method", ["uncertainty", "dwa", "pcgrad", "gradnorm"])
def test_weighting_methods_train(method: str, tiny_nih: Path, tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / method
    summary = train(tiny_config(f"weighting.method={method}", "train.epochs=1", "train.log_every=2"),
                    data_root=tiny_nih, out=out, cache_dir=tiny_cache, device="cpu")
    assert summary.steps == 7
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["weighting"] is not None
    record = next(r for r in _records(out) if r.get("event") == "epoch")
    assert all(math.isfinite(record[f"train/weight/{t}"]) for t in ("findings", "age"))
    if method == "uncertainty":  # its log-variances are trained: the optimizer has the extra group
        groups = state["optimizer"]["param_groups"]
        assert any(g.get("name") == "weighting" and g["weight_decay"] == 0.0 for g in groups)


def test_grad_norm_measurement_is_separate_from_step_logging(tiny_nih: Path, tiny_cache: Path,
                                                              tmp_path: Path) -> None:
    # Gradient norms cost one backward per task: grad_norm_every=0 turns them off while step records stay.
    out = tmp_path / "nonorm"
    train(tiny_config("train.epochs=1", "train.grad_norm_every=0"), data_root=tiny_nih, out=out,
          cache_dir=tiny_cache, device="cpu")
    records = _records(out)
    steps = [r for r in records if r.get("event") == "step"]
    assert len(steps) == 7 and all(math.isfinite(r["loss/findings"]) for r in steps)
    assert not any(key.startswith(("gradnorm/", "train/gradnorm/")) for r in records for key in r)


def test_single_finding_task_with_undefined_metric_still_selects(tiny_nih: Path, tiny_cache: Path,
                                                                 tmp_path: Path) -> None:
    # No tiny image has Pneumothorax: its val AUROC is undefined (NaN), yet a best checkpoint must exist.
    summary = train(tiny_config("tasks.specs=[findings:Pneumothorax]", "train.epochs=1", "tasks.pos_weight=true"),
                    data_root=tiny_nih, out=tmp_path / "ptx", cache_dir=tiny_cache, device="cpu")
    assert summary.select_metric == "val/findings:Pneumothorax/auroc_mean"
    assert summary.best_value is not None and math.isnan(summary.best_value)
    assert (tmp_path / "ptx" / "checkpoints" / "best.pt").is_file()


def test_max_steps_and_early_stopping(tiny_nih: Path, tiny_cache: Path, tmp_path: Path) -> None:
    summary = train(tiny_config("train.max_steps=3"), data_root=tiny_nih, out=tmp_path / "m", cache_dir=tiny_cache,
                    device="cpu")
    assert (summary.steps, summary.stop_reason) == (3, "max_steps")
    state = load_checkpoint(tmp_path / "m" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 3), "the stop point is resumable mid-epoch"
    # A metric that cannot move (the count of labelled val samples) never improves: patience 1 stops after epoch 2.
    # (An AUROC or MAE under lr ~ 0 still drifts with BatchNorm's running statistics, so it is no fixed point.)
    summary = train(tiny_config("train.epochs=5", "optim.lr=1e-12", "train.early_stop_patience=1",
                                "train.select_metric=val/age/n_labelled", "train.select_mode=max"),
                    data_root=tiny_nih, out=tmp_path / "e", cache_dir=tiny_cache, device="cpu")
    assert summary.stop_reason == "early_stopping" and summary.epochs == 2


def test_select_metric_must_exist(tiny_nih: Path, tiny_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.select_metric"):
        train(tiny_config("train.max_steps=1", "train.select_metric=val/findings/nope"), data_root=tiny_nih,
              out=tmp_path / "x", cache_dir=tiny_cache, device="cpu")
    with pytest.raises(ConfigError, match=r"train\.select_metric.*names no task"):
        train(tiny_config("train.max_steps=1", "train.select_metric=val/ghost/auroc_mean"), data_root=tiny_nih,
              out=tmp_path / "y", cache_dir=tiny_cache, device="cpu")


def test_cli_train_prints_summary(tiny_nih: Path, tiny_cache: Path, tmp_path: Path) -> None:
    from cxrmtl.cli import app

    cfg = write_config(tmp_path / "c.yaml", tiny_config())
    args = ["train", str(cfg), "--data", str(tiny_nih), "--out", str(tmp_path / "cli"), "--cache", str(tiny_cache),
            "--max-steps", "2", "--set", "train.epochs=1", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| steps / epochs / stop | 2 / 0 / max_steps |" in result.output
    saved = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 2 and saved["train"]["epochs"] == 1
    bad = CliRunner().invoke(app, ["train", str(cfg), "--data", str(tiny_nih), "--out", str(tmp_path / "bad"),
                                   "--set", "train.epoch=1"])
    assert isinstance(bad.exception, ConfigError) and "epoch" in str(bad.exception)


def test_default_cache_dir_is_run_adjacent(tmp_path: Path) -> None:
    path = default_cache_dir(data_root=tmp_path / "nih", out=tmp_path / "runs" / "a", size=224)
    assert path.parent == (tmp_path / "runs" / ".cxrmtl-cache").resolve() and path.name.endswith("-s224")
    assert path == default_cache_dir(data_root=tmp_path / "nih", out=tmp_path / "runs" / "b", size=224)


# -- augmentation ---------------------------------------------------------------------------------------------


def _batch(seed: int = 0) -> torch.Tensor:
    images = torch.full((16, 1, 32, 32), 40, dtype=torch.uint8)
    images[:, :, :12] = 220  # bright top (apices up): must stay on top, no vertical flip
    return images


def test_augment_disabled_or_eval_is_plain_normalisation() -> None:
    images = _batch()
    aug = BatchAugment(AugmentConfig(enabled=False), mean=0.5, std=0.25)
    torch.testing.assert_close(aug(images, generator=step_generator(seed=0, step=0, rank=0)),
                               (images.float() / 255 - 0.5) / 0.25)
    on = BatchAugment(AugmentConfig(), mean=0.5, std=0.25)
    torch.testing.assert_close(on(images, generator=None), normalize(images, mean=0.5, std=0.25))


def test_augment_is_seeded_bounded_and_keeps_orientation() -> None:
    aug = BatchAugment(AugmentConfig(rotate_deg=10, translate=0.05), mean=0.5, std=0.25)
    a = aug(_batch(), generator=step_generator(seed=1, step=5, rank=0))
    b = aug(_batch(), generator=step_generator(seed=1, step=5, rank=0))
    c = aug(_batch(), generator=step_generator(seed=1, step=6, rank=0))
    assert torch.equal(a, b) and not torch.equal(a, c)
    raw = a * 0.25 + 0.5
    assert raw.min() >= 0 and raw.max() <= 1
    assert (raw[:, :, :8].mean(dim=(1, 2, 3)) > raw[:, :, -8:].mean(dim=(1, 2, 3))).all()
    theta = affine_params(1000, AugmentConfig(rotate_deg=10), step_generator(seed=0, step=0, rank=0))
    assert (theta[:, 1, 1] > 0).all(), "never a vertical flip"
    assert (theta[:, 0, 0] > 0).all(), "no horizontal flip by default"


# -- optimizer, schedule, EMA ---------------------------------------------------------------------------------


def test_warmup_then_cosine() -> None:
    fn = WarmupCosine(warmup=4, total=14, min_ratio=0.1)
    values = [fn(s) for s in range(16)]
    assert values[0] == pytest.approx(0.2) and values[3] == pytest.approx(0.8)
    assert values[4] == pytest.approx(1.0) and values[14] == pytest.approx(0.1) and values[15] == pytest.approx(0.1)
    assert all(x >= y for x, y in itertools.pairwise(values[4:]))


def test_no_weight_decay_on_1d_and_weighting_params() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    extra = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1, weighting_lr=0.01), extra=[extra])
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["decay"]["weight_decay"] == 0.1 and len(by_name["decay"]["params"]) == 1
    assert by_name["no_decay"]["weight_decay"] == 0.0 and len(by_name["no_decay"]["params"]) == 3
    assert by_name["weighting"]["lr"] == 0.01 and by_name["weighting"]["params"][0] is extra


def test_ema_blends_parameters_and_copies_integer_buffers() -> None:
    model = torch.nn.BatchNorm1d(2)
    ema = ModelEMA(model, decay=0.75)
    with torch.no_grad():
        model.weight.fill_(5.0)
    model.num_batches_tracked.fill_(7)
    ema.update(model)
    np.testing.assert_allclose(ema.module.weight.detach().numpy(), [2.0, 2.0])  # 0.75 * 1 + 0.25 * 5
    assert int(ema.module.num_batches_tracked) == 7
