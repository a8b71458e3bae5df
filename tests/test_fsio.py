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


def test_format_bytes_keeps_three_figures_in_a_readable_unit() -> None:
    from cxrmtl.fsio import format_bytes

    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(3 * 2**20) == "3 MiB"
    assert format_bytes(85.3 * 2**20) == "85.3 MiB"
    assert format_bytes(10.5 * 2**30) == "10.5 GiB"
    assert format_bytes(7 * 2**20 + 1) == "7 MiB"


def test_exclusive_lock_names_its_holder(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from cxrmtl.errors import CxrmtlError
    from cxrmtl.fsio import exclusive_lock

    lock = tmp_path / ".lock"
    with exclusive_lock(lock, what="THING"):
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["since"].endswith("Z")
        # Another process (flock locks belong to open files, so a second open in this process would also block).
        code = ("import sys; from cxrmtl.fsio import exclusive_lock\n"
                "try:\n    with exclusive_lock(sys.argv[1], what='THING'): pass\n"
                "except Exception as e: print(e)")
        out = subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
        assert out.stdout.strip() == f"THING is in use by pid {os.getpid()} (host {holder['host']}) since " \
                                     f"{holder['since']}"
        with pytest.raises(CxrmtlError, match="THING is in use by pid"), exclusive_lock(lock, what="THING"):
            pass
    assert lock.read_text() == "", "a released lock names nobody"
    with exclusive_lock(lock, what="THING"):
        pass
