"""Faults around a run folder: a second writer, a kill before the first checkpoint, a temp file left by a kill,
a full disk, unreadable images, a resume of a finished run; plus the epoch line a user reads."""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from trainkit import REPO, cli_env, run_cli, tiny_config, write_config, write_tiny_nih

from cxrmtl.errors import CheckpointError
from cxrmtl.runs import checkpoint as ckpt
from cxrmtl.train.loop import train

SHORT = ("train.epochs=1", "train.max_steps=2")


@pytest.fixture(scope="module")
def short_run(tiny_nih: Path, tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "run"
    train(tiny_config(*SHORT), data_root=tiny_nih, out=out, cache_dir=tiny_cache, device="cpu")
    return out


def _copy(run: Path, dst: Path) -> Path:
    return shutil.copytree(run, dst)


def _records(run: Path, event: str) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == event]


@pytest.mark.slow
def test_a_second_train_on_a_running_run_fails_at_once(tiny_nih: Path, tiny_cache: Path, tmp_path: Path) -> None:
    """Two real processes: the second `train --resume` is refused in one line naming the first one's pid."""
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config("train.epochs=1000", "train.checkpoint_every=0"))
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "cxrmtl", "train", str(cfg), "--data", str(tiny_nih), "--out",
                              str(run), "--cache", str(tiny_cache), "--device", "cpu"],
                             env=cli_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (run / "log.jsonl").is_file():  # training is under way (the lock was taken before everything)
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first training never started"
            time.sleep(0.05)
        started = time.monotonic()
        second = run_cli(["train", str(cfg), "--out", str(run), "--resume", "--device", "cpu"])
        took = time.monotonic() - started
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith(f"error: {run} is in use by pid {first.pid} (host ")
    assert " since 20" in lines[0]
    assert took < 30, "refused at once, before any data or model work"
    assert len(_records(run, "epoch")) == 0 or all(r["step"] >= 7 for r in _records(run, "epoch"))


def test_resume_without_a_checkpoint_starts_from_step_0(short_run: Path, tiny_nih: Path, tiny_cache: Path,
                                                        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = _copy(short_run, tmp_path / "run")
    shutil.rmtree(run / "checkpoints")  # what a kill before the first checkpoint leaves: config, log, no last.pt
    with caplog.at_level(logging.INFO, logger="cxrmtl"):
        summary = train(tiny_config(*SHORT), data_root=tiny_nih, out=run, cache_dir=tiny_cache, resume=True,
                        device="cpu")
    assert f"{run}: has no checkpoint yet (it stopped before its first one); starting from step 0" in caplog.text
    assert summary.steps == 2 and not summary.already_finished
    assert len(_records(run, "end")) == 1, "the killed attempt's records are dropped"
    fresh = train(tiny_config(*SHORT), data_root=tiny_nih, out=tmp_path / "new", cache_dir=tiny_cache,
                  resume=True, device="cpu")
    assert fresh.steps == 2, "--resume on an empty folder starts a run too"


def test_a_checkpoint_is_also_written_by_time(tiny_nih: Path, tiny_cache: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[tuple[str, int, int]] = []
    real = ckpt.save_checkpoint

    def spy(path: Path, state: dict) -> None:
        saved.append((Path(path).name, int(state["step"]), int(state["batch_in_epoch"])))
        real(path, state)

    monkeypatch.setattr(ckpt, "save_checkpoint", spy)
    base = ("train.epochs=1", "train.checkpoint_every=0")
    train(tiny_config(*base, "train.checkpoint_minutes=0"), data_root=tiny_nih, out=tmp_path / "a",
          cache_dir=tiny_cache, device="cpu")
    assert [s for s in saved if s[0] == "last.pt"] == [("last.pt", 7, 0)], "0 = by time never: epoch end only"
    saved.clear()
    train(tiny_config(*base, "train.checkpoint_minutes=1e-9"), data_root=tiny_nih, out=tmp_path / "b",
          cache_dir=tiny_cache, device="cpu")
    mid = [s for s in saved if s[0] == "last.pt" and s[2] > 0]
    assert [s[1] for s in mid] == [1, 2, 3, 4, 5, 6], "due after every step mid-epoch"


def test_a_temp_checkpoint_left_by_a_kill_is_removed(short_run: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    run = _copy(short_run, tmp_path / "run")
    leftover = run / "checkpoints" / ".last.pt.tmp4242"
    leftover.write_bytes(b"\0" * 3_000_000)
    with caplog.at_level(logging.INFO, logger="cxrmtl"):
        train(tiny_config(*SHORT), out=run, resume=True, device="cpu")
    assert not leftover.exists()
    assert f"{run}: removed .last.pt.tmp4242 left by a write that was killed mid-way (3 MB)" in caplog.text


def test_full_disk_while_saving_keeps_the_previous_checkpoint(short_run: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run = _copy(short_run, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def full_disk(fh, state) -> None:
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_state", full_disk)
    with pytest.raises(CheckpointError) as info:
        train(tiny_config("train.epochs=1", "train.max_steps=4"), out=run, resume=True, device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{last}: no space left on device while saving the checkpoint (needs about ")
    assert re.search(r"needs about [0-9.]+ [kMG]B\) \([0-9.]+ [kMGTP]?B free on its file system\)", message), message
    assert "the previous last.pt is intact" in message
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"], "no temp file left"


def test_unreadable_images_are_counted_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_tiny_nih(tmp_path / "nih")
    train_image = (root / "train_val_list.txt").read_text().split()[0]
    (root / "images" / train_image).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.new("L", (1, 1)).save(root / "images" / (root / "test_list.txt").read_text().split()[0])  # test: ignored
    with caplog.at_level(logging.WARNING, logger="cxrmtl.train"):
        train(tiny_config("train.epochs=2", "train.max_steps=9"), data_root=root, out=tmp_path / "run",
              cache_dir=tmp_path / "cache", device="cpu")
    lines = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "skipping 1 unreadable images (train 1, val 0)" in lines[0] and "manifest.json" in lines[0]
    epochs = _records(tmp_path / "run", "epoch")
    assert len(epochs) == 2 and all(r["skipped_unreadable"] == {"train": 1, "val": 0} for r in epochs)


def test_resume_of_a_finished_run_does_nothing(short_run: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    run = _copy(short_run, tmp_path / "run")
    last = (run / "checkpoints" / "last.pt").read_bytes()
    with caplog.at_level(logging.INFO, logger="cxrmtl"):
        summary = train(tiny_config(*SHORT), out=run, resume=True, device="cpu")
    assert summary.already_finished and summary.steps == 2
    assert f"{run}: already finished at step 2 (epoch 0); nothing to do" in caplog.text
    assert len(_records(run, "end")) == 1, "no second end record"
    assert (run / "checkpoints" / "last.pt").read_bytes() == last
    longer = train(tiny_config("train.epochs=1", "train.max_steps=3"), out=run, resume=True, device="cpu")
    assert longer.steps == 3 and not longer.already_finished, "a larger budget continues a finished run"
    assert [r["step"] for r in _records(run, "end")] == [2, 3]


def test_early_stopped_run_is_not_trained_further_on_resume(tiny_nih: Path, tiny_cache: Path, tmp_path: Path) -> None:
    # n_labelled never changes, so epoch 2 does not improve on epoch 1: patience 1 stops the run there.
    cfg = tiny_config("train.epochs=6", "train.early_stop_patience=1", "train.select_metric=val/age/n_labelled",
                      "train.select_mode=max")
    first = train(cfg, data_root=tiny_nih, out=tmp_path / "run", cache_dir=tiny_cache, device="cpu")
    assert first.stop_reason == "early_stopping" and first.steps == 14
    again = train(cfg, out=tmp_path / "run", resume=True, device="cpu")
    assert again.already_finished and again.steps == 14, "before: a resume trained a third epoch"
    assert len(_records(tmp_path / "run", "end")) == 1


@pytest.mark.slow
def test_cli_resume_of_a_finished_run_exits_0_and_shows_epoch_lines(tiny_nih: Path, tiny_cache: Path,
                                                                    tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config("train.epochs=2", "train.progress=true"))
    run = tmp_path / "run"
    done = run_cli(["train", str(cfg), "--data", str(tiny_nih), "--out", str(run), "--cache", str(tiny_cache),
                    "--device", "cpu"])
    assert done.returncode == 0, done.stderr
    epoch_lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.startswith("epoch ")
                   and " step " in line]
    assert len(epoch_lines) == 2, done.stderr
    assert epoch_lines[0].startswith("epoch 1/2 step 7: loss findings ")
    for part in ("abnormal ", "age ", "sex ", "view ", "| val/findings/auroc_mean ", " img/s | ", "(total 0:00:"):
        assert part in epoch_lines[0], part
    again = run_cli(["train", str(cfg), "--out", str(run), "--resume", "--device", "cpu"])
    assert again.returncode == 0, again.stderr
    assert f"{run}: already finished at step 14 (epoch 2); nothing to do" in again.stderr
    assert len(_records(run, "end")) == 1


def test_bad_out_and_missing_data_are_one_line_errors(tiny_nih: Path, tmp_path: Path) -> None:
    from cxrmtl.errors import ConfigError, RunError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunError, match="exists and is not a directory"):
        train(tiny_config(*SHORT), data_root=tiny_nih, out=blocker, device="cpu")
    with pytest.raises(RunError, match=r"file/run: cannot create the run folder \(Not a directory\)"):
        train(tiny_config(*SHORT), data_root=tiny_nih, out=blocker / "run", device="cpu")
    with pytest.raises(ConfigError, match="--data: needed to start a run"):
        train(tiny_config(*SHORT), out=tmp_path / "new", device="cpu")
    assert not (tmp_path / "new").exists()
