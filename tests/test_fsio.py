"""Crash-safe writes: the target holds the old or the whole new content, and no temporary file is left behind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cxrmtl.fsio import atomic_write_bytes, atomic_write_text, write_json_atomic


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "old\n")
    atomic_write_bytes(target, b"new content\n")
    assert target.read_bytes() == b"new content\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_json_refuses_nan_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"auroc": 0.8})
    with pytest.raises(ValueError):
        write_json_atomic(target, {"auroc": math.nan})
    assert json.loads(target.read_text()) == {"auroc": 0.8}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "kept")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
