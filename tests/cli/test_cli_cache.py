"""Tests of ``cxrmtl cache build`` / ``cxrmtl cache verify`` as real subprocesses, including SIGKILL mid-build."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrmtl.data.cache import IMAGES_FILE, JOURNAL_FILE, MANIFEST_FILE, NAMES_FILE, build_cache
from cxrmtl.data.nih import load_index

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_nih(root: Path, n: int, *, side: int, distinct: int = 8, corrupt: int | None = None) -> list[str]:
    """An NIH-layout folder of n PNGs (``distinct`` different smooth images, copied round-robin)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:side, 0:side]
    blobs = []
    for k in range(distinct):
        image = (127 + 100 * np.sin(xx / (20.0 + k)) * np.cos(yy / (31.0 + k)) + rng.normal(0, 3, (side, side)))
        blobs.append(cv2.imencode(".png", np.clip(image, 0, 255).astype(np.uint8))[1].tobytes())
    names = [f"{i + 1:08d}_000.png" for i in range(n)]
    for i, name in enumerate(names):
        (root / "images" / name).write_bytes(b"\x89PNG\r\n\x1a\nbroken" if i == corrupt else blobs[i % distinct])
    rows = [f"{name},No Finding,0,{i + 1},40,M,PA,{side},{side},0.143,0.143\n" for i, name in enumerate(names)]
    (root / "Data_Entry_2017_v2020.csv").write_text(HEADER + "".join(rows))
    (root / "train_val_list.txt").write_text("\n".join(names[: n - n // 4]))
    (root / "test_list.txt").write_text("\n".join(names[n - n // 4 :]))
    return names


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cxrmtl", "cache", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=300)


def cache_bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in (IMAGES_FILE, NAMES_FILE, MANIFEST_FILE)}


def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str | Path
) -> tuple[int, str, str]:
    """Run the real console entry point in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from cxrmtl.cli import main

    monkeypatch.setattr(sys, "argv", ["cxrmtl", "cache", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_build_verify_and_flipped_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    names = write_nih(tmp_path / "nih", 6, side=48, corrupt=2)
    out = tmp_path / "cache"
    code, stdout, stderr = run_main(monkeypatch, capsys, "build", tmp_path / "nih", out, "--size", "16",
                                    "--workers", "1", "--no-progress")
    assert code == 0, stderr
    assert "ok 5, unreadable 1" in stdout and f"unreadable {names[2]}" in stderr

    code, _, stderr = run_main(monkeypatch, capsys, "build", tmp_path / "nih", out, "--size", "32")
    assert code == 2 and "error:" in stderr and "size 16" in stderr
    assert run_main(monkeypatch, capsys, "verify", out)[0] == 0

    with open(out / IMAGES_FILE, "r+b") as fh:
        fh.seek(3 * 16 * 16 + 5)
        value = fh.read(1)[0]
        fh.seek(3 * 16 * 16 + 5)
        fh.write(bytes([value ^ 1]))
    bad = cli("verify", out)  # a real process: its exit status is what scripts see
    assert bad.returncode == 2 and "1 of 6 rows" in bad.stderr and f"row 3 ({names[3]})" in bad.stderr


def test_progress_bar_and_noop_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    write_nih(tmp_path / "nih", 4, side=32)
    code, _, stderr = run_main(monkeypatch, capsys, "build", tmp_path / "nih", tmp_path / "cache", "--size", "16",
                               "--workers", "1")
    assert code == 0 and "img/s" in stderr and "4/4" in stderr
    code, stdout, _ = run_main(monkeypatch, capsys, "build", tmp_path / "nih", tmp_path / "cache", "--size", "16")
    assert code == 0 and "nothing to do" in stdout


def test_missing_root_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run_main(monkeypatch, capsys, "build", tmp_path / "absent", tmp_path / "cache", "--size", "16")
    assert code == 2 and "absent" in stderr
    code, _, stderr = run_main(monkeypatch, capsys, "verify", tmp_path / "cache")
    assert code == 2 and "manifest.json: missing" in stderr


def _wait_for_journal_lines(proc: subprocess.Popen, journal: Path, lines: int) -> None:
    deadline = time.monotonic() + 120
    while not journal.is_file() or journal.read_bytes().count(b"\n") < lines:
        assert proc.poll() is None, f"build ended before it could be killed: {proc.communicate()}"
        assert time.monotonic() < deadline, "no journal lines after 120 s"
        time.sleep(0.002)


def _group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_sigkill_mid_build_then_rerun_is_byte_identical(tmp_path: Path) -> None:
    """Kill a real ``cxrmtl cache build`` (2 workers) with SIGKILL mid-build, rerun, compare with a clean build."""
    root = tmp_path / "nih"
    write_nih(root, 64, side=1024, corrupt=37)
    build_cache(load_index(root), tmp_path / "reference", size=32, workers=1, progress=False)
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "cxrmtl", "cache", "build", str(root), str(out), "--size", "32", "--workers", "2",
            "--chunk", "2", "--sync-every", "0", "--no-progress"]
    proc = subprocess.Popen(args, env=ENV, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_journal_lines(proc, out / JOURNAL_FILE, lines=3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # The pool workers die with their parent (PR_SET_PDEATHSIG), so nothing keeps writing after the kill.
        assert _group_gone(proc.pid, timeout=20), "decoder workers outlived the killed build"
    finally:
        with contextlib.suppress(ProcessLookupError):  # clean up whatever is left of the group we started
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / MANIFEST_FILE).exists(), "the build finished before the kill; nothing was tested"
    journaled = (out / JOURNAL_FILE).read_bytes().count(b"\n")
    assert 3 <= journaled < 32

    rerun = cli("build", root, out, "--size", "32", "--workers", "2", "--no-progress")
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed after {2 * journaled}" in rerun.stdout
    assert cache_bytes(out) == cache_bytes(tmp_path / "reference")
    shutil.rmtree(root)

