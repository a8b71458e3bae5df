"""``cxrmtl download`` as a user types it (a subprocess), against a local mirror of a tiny release (tests/kit)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mirror import Knobs, MirrorServer, tiny_release
from trainkit import REPO, cli_env, run_cli

from cxrmtl.data.nih import load_index


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return tiny_release(tmp_path_factory.mktemp("release"))


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_help_lists_download() -> None:
    proc = run_cli(["--help"], timeout=60)
    assert proc.returncode == 0 and "download" in proc.stdout


def test_download_then_rerun(files: dict[str, bytes], tmp_path: Path) -> None:
    dest = tmp_path / "nih"
    with MirrorServer(files, Knobs(drop_after={"images_004.tar.gz": 700})) as server:
        first = run_cli(["download", str(dest), "--mirror", server.url, "--jobs", "2"])
        assert first.returncode == 0, first.stderr
        assert [g.range for g in server.gets("images_004.tar.gz")] == [None, "bytes=700-"]  # resumed, not restarted
        server.log.clear()
        again = run_cli(["download", str(dest), "--mirror", server.url, "--no-progress"])
        assert again.returncode == 0, again.stderr
        assert server.gets() == []
    assert "16 downloaded" in first.stdout and "1 resumed" in first.stdout and "12 unpacked" in first.stdout
    assert "note: train_val_list.txt: md5" in first.stderr and "not the official split" in first.stderr
    assert "next: cxrmtl data check" in first.stdout and "Wang" in first.stdout
    assert "0 downloaded" in again.stdout and "16 already complete and verified" in again.stdout
    index = load_index(dest)  # what `cxrmtl data check` and training read
    assert (index.table["path"] != "").all()


def test_killed_mid_transfer_resumes_from_the_part(files: dict[str, bytes], tmp_path: Path) -> None:
    name, stall = "images_001.tar.gz", 1200
    dest = tmp_path / "nih"
    part = dest / "archives" / f"{name}.part"
    knobs = Knobs(stall_after={name: stall})
    with MirrorServer(files, knobs) as server:
        args = [sys.executable, "-m", "cxrmtl", "download", str(dest), "--mirror", server.url, "--only", "images",
                "--jobs", "1", "--no-progress"]
        proc = subprocess.Popen(args, env=cli_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while not (part.is_file() and part.stat().st_size == stall):
                assert time.monotonic() < deadline and proc.poll() is None, "transfer never started"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            knobs.release.set()
        rerun = run_cli(["download", str(dest), "--mirror", server.url, "--only", "images", "--no-progress"])
        assert rerun.returncode == 0, rerun.stderr
        assert [g.range for g in server.gets(name)] == [None, f"bytes={stall}-"]
    manifest = json.loads((dest / "download_manifest.json").read_text())["files"]
    assert manifest[name]["sha256"] == hashlib.sha256(files[name]).hexdigest()


def test_offline_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    line = _one_error_line(run_cli(["download", str(tmp_path / "nih"), "--mirror", f"http://127.0.0.1:{port}/"]))
    assert f"cannot reach 127.0.0.1:{port}" in line and "use --mirror URL or download by hand from" in line
    assert "https://nihcc.app.box.com/v/ChestXray-NIHCC" in line


def test_metadata_without_mirror_names_the_release_page(tmp_path: Path) -> None:
    line = _one_error_line(run_cli(["download", str(tmp_path / "nih"), "--only", "metadata", "--no-progress"]))
    assert "Data_Entry_2017_v2020.csv, BBox_List_2017.csv, train_val_list.txt, test_list.txt" in line
    assert "https://nihcc.app.box.com/v/ChestXray-NIHCC" in line and "by hand" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "pngs"], "error: --only: 'pngs' is not one of all, metadata, images"),
        (["--jobs", "0"], "error: --jobs: must be between 1 and 12, got 0"),
        (["--mirror", "nih.example.org"], "error: --mirror: 'nih.example.org' is not an http(s) URL"),
        (["--kaggle", "/nonexistent-kaggle"], "error: /nonexistent-kaggle: --kaggle folder not found"),
        (["--kaggle", "/tmp", "--mirror", "http://x/"], "error: --kaggle and --mirror: give one source"),
    ],
)
def test_mistakes_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    assert _one_error_line(run_cli(["download", str(tmp_path / "nih"), *args], timeout=60)).startswith(message)


def test_kaggle_copy(tmp_path: Path) -> None:
    from cxrmtl.phantom.generate import write_phantom

    write_phantom(tmp_path / "kaggle", patients=6, size=32, seed=2)
    proc = run_cli(["download", str(tmp_path / "nih"), "--kaggle", str(tmp_path / "kaggle")], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "image folders linked" in proc.stdout and "0 missing" in proc.stdout
    assert "NOT the official split" in proc.stdout
