"""Checkpoints: a SIGKILLed training resumes to bit-identical weights; corrupt or mismatched checkpoints are refused."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trainkit import REPO, cli_env, tiny_config, write_config

from cxrmtl.errors import CheckpointError, RunError
from cxrmtl.runs.checkpoint import load_checkpoint, save_checkpoint
from cxrmtl.train.loop import train


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tiny_nih: Path, tiny_cache: Path, tmp_path: Path) -> None:
    cfg = tiny_config("train.epochs=2", "train.checkpoint_every=3")  # 7 steps per epoch: step 3 is mid-epoch
    cfg_path = write_config(tmp_path / "cfg.yaml", cfg)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cxrmtl", "train", str(cfg_path), "--data", str(tiny_nih), "--out", str(killed),
           "--cache", str(tiny_cache), "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=cli_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    try:
        while not last.exists():
            assert proc.poll() is None, f"training ended before the first checkpoint: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(last)
    assert 0 < state["step"] < 14 and state["batch_in_epoch"] > 0, "the kill should land mid-epoch"

    resumed = train(cfg, data_root=tiny_nih, out=killed, cache_dir=tiny_cache, resume=True, device="cpu")
    reference = train(cfg, data_root=tiny_nih, out=tmp_path / "ref", cache_dir=tiny_cache, device="cpu")
    assert resumed.steps == reference.steps == 14
    got, want = _weights(killed), _weights(tmp_path / "ref")
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), f"{name} differs after resume"
    assert resumed.best_value == pytest.approx(reference.best_value, nan_ok=True)
    steps = [line for line in (killed / "log.jsonl").read_text().splitlines() if '"event": "step"' in line]
    assert len(steps) == 14, "log lines of the killed run after its checkpoint are trimmed on resume"


@pytest.fixture(scope="module")
def short_run(tiny_nih: Path, tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("short") / "run"
    train(tiny_config("train.epochs=1", "train.max_steps=2"), data_root=tiny_nih, out=out, cache_dir=tiny_cache,
          device="cpu")
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "corrupt or truncated"),
        (lambda p: p.write_bytes(b"not a checkpoint at all"), "corrupt or truncated"),
        (lambda p: torch.save({"hello": 1}, p), "missing"),
    ],
    ids=["truncated", "garbage", "foreign"],
)
def test_damaged_checkpoint_is_refused(short_run: Path, tiny_nih: Path, tiny_cache: Path, tmp_path: Path,
                                       damage, needle: str) -> None:
    run = _copy_run(short_run, tmp_path / "run")
    damage(run / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError, match=needle) as info:
        train(tiny_config("train.epochs=1"), data_root=tiny_nih, out=run, cache_dir=tiny_cache, resume=True,
              device="cpu")
    assert "last.pt" in str(info.value)


@pytest.mark.parametrize(
    ("override", "needle"),
    [("model.backbone=test_vit", "model.backbone"), ("optim.lr=0.5", "optim.lr"),
     ("tasks.specs=[findings, age]", "tasks.specs")],
)
def test_mismatched_config_is_refused(short_run: Path, tiny_nih: Path, tiny_cache: Path, tmp_path: Path,
                                      override: str, needle: str) -> None:
    run = _copy_run(short_run, tmp_path / "run")
    with pytest.raises(CheckpointError, match=needle):
        train(tiny_config("train.epochs=1", override), data_root=tiny_nih, out=run, cache_dir=tiny_cache,
              resume=True, device="cpu")


def test_checkpoint_from_before_a_config_field_existed_still_loads_and_resumes(
        short_run: Path, tiny_nih: Path, tiny_cache: Path, tmp_path: Path) -> None:
    # Runs trained before data.rare_findings / data.rare_positive_fraction / train.grad_norm_every were added: their
    # checkpoint's config lacks the keys; the code that wrote them behaved as the defaults do.
    import yaml

    from cxrmtl.runs.checkpoint import load_run

    run = _copy_run(short_run, tmp_path / "run")
    for name in ("last.pt", "best.pt"):
        path = run / "checkpoints" / name
        state = load_checkpoint(path)
        for section, key in (("data", "rare_findings"), ("data", "rare_positive_fraction"),
                             ("train", "grad_norm_every")):
            state["config"][section].pop(key)
        save_checkpoint(path, state)
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    saved["data"].pop("rare_findings"), saved["train"].pop("grad_norm_every")
    (run / "config.yaml").write_text(yaml.safe_dump(saved), encoding="utf-8")
    assert load_run(run, which="last", device="cpu").step == 2
    summary = train(tiny_config("train.epochs=1", "train.max_steps=3"), data_root=tiny_nih, out=run,
                    cache_dir=tiny_cache, resume=True, device="cpu")
    assert summary.steps == 3
    # defaults fill only what is missing: a value changed on resume is still refused
    with pytest.raises(CheckpointError, match="rare_positive_fraction"):
        train(tiny_config("train.epochs=1", "train.max_steps=4", "data.rare_positive_fraction=0.5"),
              data_root=tiny_nih, out=run, cache_dir=tiny_cache, resume=True, device="cpu")


def test_fresh_start_never_overwrites_a_run(short_run: Path, tiny_nih: Path, tiny_cache: Path, tmp_path: Path) -> None:
    run = _copy_run(short_run, tmp_path / "run")
    before = (run / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(RunError, match="already holds a run"):
        train(tiny_config("train.epochs=1"), data_root=tiny_nih, out=run, cache_dir=tiny_cache, device="cpu")
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_with_more_steps_continues(short_run: Path, tiny_nih: Path, tiny_cache: Path, tmp_path: Path) -> None:
    run = _copy_run(short_run, tmp_path / "run")
    summary = train(tiny_config("train.epochs=1", "train.max_steps=4"), data_root=tiny_nih, out=run,
                    cache_dir=tiny_cache, resume=True, device="cpu")
    assert summary.steps == 4 and summary.stop_reason == "max_steps"


def test_save_is_atomic_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    good = {"model": {"w": torch.ones(2)}, "config": {}, "labels": {}, "epoch": 0, "batch_in_epoch": 0, "step": 1}
    save_checkpoint(path, good)
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(path, {**good, "step": 2, "extra": Unpicklable()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"], "no temporary file is left behind"
    assert load_checkpoint(path)["step"] == 1
