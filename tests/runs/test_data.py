"""A run folder knows its data: RUN/data.json, the index fingerprint, open_run_data (the one index + cache wiring)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from trainkit import run_cli, tiny_config, write_tiny_nih

from cxrmtl.data.cache import build_cache
from cxrmtl.data.nih import load_index
from cxrmtl.errors import CacheError, RunError
from cxrmtl.runs.data import (
    record_kind,
    default_cache_dir,
    index_fingerprint,
    open_run_data,
    read_data_record,
)
from cxrmtl.train.loop import train

SHORT = ("train.epochs=1", "train.max_steps=2")


def _fingerprint(root: Path, val_fraction: float = 0.25, split_seed: int = 0) -> str:
    index = load_index(root, val_fraction=val_fraction, split_seed=split_seed)
    return index_fingerprint(index, val_fraction=val_fraction, split_seed=split_seed)


def test_train_writes_the_data_record(short_run: Path, tiny_nih: Path) -> None:
    doc = json.loads((short_run / "data.json").read_text())
    assert doc["schema"] == 1
    assert doc["data_root"] == str(tiny_nih.resolve()) and Path(doc["data_root"]).is_absolute()
    cfg = tiny_config(*SHORT)
    assert doc["cache_dir"] == str(default_cache_dir(data_root=tiny_nih, out=short_run, size=32))
    assert doc["fingerprint"] == _fingerprint(tiny_nih, cfg.data.val_fraction, cfg.data.split_seed)
    assert doc["data_kind"] == "subset" and doc["image_size"] == 32
    assert doc["val_fraction"] == 0.25 and doc["split_seed"] == cfg.data.split_seed
    splits = doc["splits"]
    assert sum(s["images"] for s in splits.values()) == 48 and sum(s["patients"] for s in splits.values()) == 24
    assert splits["test"] == {"listed": 12, "images": 12, "patients": 6}
    assert read_data_record(short_run).fingerprint == doc["fingerprint"]


def test_fingerprint_follows_names_splits_labels_and_settings(tiny_nih: Path, other_nih: Path, tmp_path: Path) -> None:
    base = _fingerprint(tiny_nih)
    assert base == _fingerprint(tiny_nih) and len(base) == 64
    assert base != _fingerprint(other_nih), "other labels"
    assert base != _fingerprint(tiny_nih, val_fraction=0.5), "other val split"
    assert base != _fingerprint(tiny_nih, split_seed=7)
    # The same rows in another CSV order, without image files: same index, same fingerprint.
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("train_val_list.txt", "test_list.txt"):
        shutil.copy(tiny_nih / name, copy / name)
    header, *rows = (tiny_nih / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    (copy / "Data_Entry_2017_v2020.csv").write_text("\n".join([header, *reversed(rows)]) + "\n")
    assert _fingerprint(copy) == base


def test_record_kind_reads_the_phantom_marker(tiny_nih: Path, tmp_path: Path) -> None:
    assert record_kind(load_index(tiny_nih)) == "subset"
    marked = shutil.copytree(tiny_nih, tmp_path / "marked")
    (marked / "phantom.json").write_text("{}")
    assert record_kind(load_index(marked)) == "phantom"


def test_open_run_data_defaults_to_the_record_and_refuses_other_data(
        short_run: Path, tiny_nih: Path, other_nih: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_config(*SHORT)
    record = read_data_record(short_run)
    opened = open_run_data(short_run, data=cfg.data)
    assert str(opened.index.root) == record.data_root and str(opened.cache.out) == record.cache_dir
    assert opened.matches_run and opened.record.fingerprint == record.fingerprint
    with pytest.raises(RunError) as info:
        open_run_data(short_run, data=cfg.data, data_root=other_nih)
    message = str(info.value)
    assert message == (f"--data {other_nih.resolve()}: its index fingerprint differs from the data {short_run} was "
                       f"trained on ({tiny_nih.resolve()}); pass --allow-data-mismatch to evaluate on it on purpose")
    with caplog.at_level(logging.INFO, logger="cxrmtl"):
        other = open_run_data(short_run, data=cfg.data, data_root=other_nih, allow_data_mismatch=True, progress=False)
    assert not other.matches_run
    assert str(other.cache.out) != record.cache_dir, "another data root gets its own cache, never the run's"
    said = caplog.text
    assert "no cache there yet; building it now: 48 images at 32 px" in said, said
    assert "not the data" in said and "--allow-data-mismatch" in said


def test_a_cache_is_never_rebuilt_silently(short_run: Path, tiny_nih: Path, tmp_path: Path) -> None:
    cfg = tiny_config(*SHORT)
    wrong_size = tmp_path / "s16"
    build_cache(load_index(tiny_nih), wrong_size, size=16, workers=1, progress=False)
    before = (wrong_size / "manifest.json").read_bytes()
    with pytest.raises(CacheError, match=r"size 16, this run asks for 32; pass --cache with another folder"):
        open_run_data(short_run, data=cfg.data, cache_dir=wrong_size)
    assert (wrong_size / "manifest.json").read_bytes() == before
    with pytest.raises(CacheError, match="no cache there yet; build it first: cxrmtl cache build"):
        open_run_data(short_run, data=cfg.data, cache_dir=tmp_path / "none", build_missing_cache=False)
    assert not (tmp_path / "none").exists()


def test_a_run_without_record_needs_data(short_run: Path, tmp_path: Path) -> None:
    old = shutil.copytree(short_run, tmp_path / "old")
    (old / "data.json").unlink()
    with pytest.raises(RunError, match=r"data.json: missing .* pass --data"):
        open_run_data(old, data=tiny_config(*SHORT).data)


def test_resume_on_other_data_is_refused(short_run: Path, other_nih: Path, tmp_path: Path) -> None:
    run = shutil.copytree(short_run, tmp_path / "run")
    before = (run / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(RunError, match=r"fingerprint differs .* a run resumes only on the data it was trained on"):
        train(tiny_config("train.epochs=1", "train.max_steps=4"), data_root=other_nih, out=run, resume=True,
              device="cpu")
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_reads_its_data_from_the_record(short_run: Path, tmp_path: Path) -> None:
    run = shutil.copytree(short_run, tmp_path / "run")
    summary = train(tiny_config("train.epochs=1", "train.max_steps=3"), out=run, resume=True, device="cpu")
    assert summary.steps == 3


@pytest.mark.slow
def test_evaluate_and_localize_use_the_run_s_data(short_run: Path, tiny_nih: Path, other_nih: Path,
                                                  tmp_path: Path) -> None:
    """Through the installed entry point: no --data needed; other data is one line, or with the flag leaves
    RUN/thresholds.json alone."""
    run = shutil.copytree(short_run, tmp_path / "run")
    done = run_cli(["evaluate", str(run), "--bootstrap", "20", "--no-figures"])
    assert done.returncode == 0, done.stderr
    thresholds = json.loads((run / "thresholds.json").read_text())
    fingerprint = read_data_record(run).fingerprint
    assert thresholds["data"] == {"root": str(tiny_nih.resolve()), "fingerprint": fingerprint, "split": "val",
                                  "kind": "subset"}
    kept = (run / "thresholds.json").read_bytes()

    refused = run_cli(["evaluate", str(run), "--data", str(other_nih), "--no-figures"])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(f"error: --data {other_nih.resolve()}: its index fingerprint differs")

    forced = run_cli(["evaluate", str(run), "--data", str(other_nih), "--allow-data-mismatch", "--bootstrap", "20",
                      "--no-figures"])
    assert forced.returncode == 0, forced.stderr
    assert (run / "thresholds.json").read_bytes() == kept, "the run's operating points are not replaced"
    elsewhere = json.loads((run / "eval" / "test" / "thresholds.json").read_text())
    assert elsewhere["data"]["root"] == str(other_nih.resolve()) and elsewhere["data"]["fingerprint"] != fingerprint
    assert "RUN/thresholds.json left as it was" in forced.stderr
    assert json.loads((run / "eval" / "test" / "metrics.json").read_text())["data"]["matches_run"] is False

    localized = run_cli(["localize", str(run), "--gallery", "0"])
    assert localized.returncode == 0, localized.stderr
    assert (run / "eval" / "test" / "localization" / "localization.json").is_file()


def test_demo_style_cache_step_logs_why_it_builds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_tiny_nih(tmp_path / "nih", patients=4)
    cfg = tiny_config()
    with caplog.at_level(logging.WARNING, logger="cxrmtl"):
        first = open_run_data(data=cfg.data, data_root=root, cache_dir=tmp_path / "c", progress=False)
    assert "no cache there yet; building it now: 8 images at 32 px" in caplog.text
    assert first.run_record is None and first.matches_run and len(first.cache) == 8
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cxrmtl"):
        open_run_data(data=cfg.data, data_root=root, cache_dir=tmp_path / "c")
    assert caplog.text == "", "a ready cache is opened without a word"
