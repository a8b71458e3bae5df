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


def test_format_bytes_uses_units_that_fit() -> None:
    from cxrmtl.fsio import format_bytes

    assert [format_bytes(n) for n in (0, 999, 1000, 49_152, 12_345_678, 3_435_973_837, 2 * 10**12)] == [
        "0 B", "999 B", "1 kB", "49.2 kB", "12.3 MB", "3.44 GB", "2 TB"]


def test_no_space_message_says_needed_and_free(tmp_path: Path) -> None:
    from cxrmtl.fsio import no_space_message

    text = no_space_message(tmp_path / "images.u8", needed=12_000_000, free=3_000_000)
    assert text == f"{tmp_path / 'images.u8'}: no space left on device (needs about 12 MB, 3 MB free)"


def test_ensure_writable_dir_creates_nothing_and_names_the_file_in_the_way(tmp_path: Path) -> None:
    from cxrmtl.errors import OutputError
    from cxrmtl.fsio import ensure_writable_dir

    assert ensure_writable_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []  # the probe file is gone and no folder was made
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=rf"--out {blocker}/run: {blocker} is a file, not a folder"):
        ensure_writable_dir(blocker / "run", "--out")
    with pytest.raises(OutputError, match=rf"--out {blocker}: is a file, not a folder"):
        ensure_writable_dir(blocker, "--out")


def test_with_filename_names_the_file_of_a_nameless_os_error(tmp_path: Path) -> None:
    import errno

    from cxrmtl.fsio import with_filename

    named = with_filename(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "last.pt")
    assert named.errno == errno.ENOSPC and named.filename == str(tmp_path / "last.pt")
    original = OSError(errno.EACCES, "Permission denied", "x")
    assert with_filename(original, tmp_path) is original


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
