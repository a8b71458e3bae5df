"""Faults a user causes beyond typing (bad output folders, broken configs, an empty image folder), through the real
entry point: each is one ``error:`` line naming the path, exit status 2, never a traceback."""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_usage import assert_one_error_line, run_cxrmtl
from trainkit import cli_env, tiny_config, write_config, write_tiny_nih

from cxrmtl.cli import one_line, os_error_message


@pytest.fixture(scope="module")
def spots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("errors")
    (base / "file.txt").write_text("a regular file\n")
    (base / "root").mkdir()
    return {"base": base, "file": base / "file.txt", "root": base / "root",
            "cfg": write_config(base / "tiny.yaml", tiny_config())}


def out_commands(spots: dict[str, Path], out: Path) -> dict[str, list[str]]:
    """The commands that take an output folder, each pointed at ``out``."""
    return {
        "phantom": ["phantom", str(out), "--patients", "2", "--size", "32", "--no-progress"],
        "cache build": ["cache", "build", str(spots["root"]), str(out), "--size", "8", "--no-progress"],
        "train": ["train", str(spots["cfg"]), "--data", str(spots["root"]), "--out", str(out), "--device", "cpu"],
    }


@pytest.mark.parametrize("command", ["phantom", "cache build", "train"])
def test_out_below_a_regular_file_is_one_line(command: str, spots: dict[str, Path]) -> None:
    out = spots["file"] / "sub" / "out"
    line = assert_one_error_line(run_cxrmtl(out_commands(spots, out)[command]), str(spots["file"]))
    assert "is a file, not a folder" in line


def test_out_that_is_a_file_is_one_line(spots: dict[str, Path]) -> None:
    line = assert_one_error_line(run_cxrmtl(out_commands(spots, spots["file"])["phantom"]), str(spots["file"]))
    assert "is a file, not a folder" in line


DROP_DAC = ["--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def without_root_override() -> list[str] | None:
    """A command prefix under which file permissions bind: none needed for a normal user; for root, ``setpriv``
    dropping CAP_DAC_OVERRIDE (root otherwise writes into a 0o500 folder); None when that is not possible here."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    probe = subprocess.run([setpriv, *DROP_DAC, "--", "true"], capture_output=True, check=False)
    return [setpriv, *DROP_DAC, "--"] if probe.returncode == 0 else None


@pytest.mark.parametrize("command", ["phantom", "cache build", "train"])
def test_unwritable_out_is_one_line(command: str, spots: dict[str, Path], tmp_path: Path) -> None:
    prefix = without_root_override()
    if prefix is None:
        pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE: a 0o500 folder stays writable")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    argv = [*prefix, sys.executable, "-m", "cxrmtl", *out_commands(spots, locked / "out")[command]]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, env=cli_env(), timeout=120)
    finally:
        locked.chmod(0o700)
    line = assert_one_error_line(result, str(locked))
    assert "cannot write there" in line and "Permission denied" in line


@pytest.mark.parametrize(("name", "content", "needles"), [
    ("dup.yaml", b"optim:\n  lr: 0.001\n  lr: 0.1\n", ("dup.yaml:3:3", "duplicate key 'lr'", "line 2")),
    ("invalid.yaml", b"train: {epochs: [1, 2}\n", ("invalid.yaml:1:", "invalid YAML")),
    ("latin1.yaml", "seed: 1\n# caf\u00e9\n".encode("latin-1"), ("latin1.yaml", "not UTF-8", "line 2")),
])
def test_bad_config_file_is_one_line(name: str, content: bytes, needles: tuple[str, ...],
                                     spots: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    argv = ["train", str(path), "--data", str(spots["root"]), "--out", str(tmp_path / "run"), "--device", "cpu"]
    line = assert_one_error_line(run_cxrmtl(argv), needles[0])
    assert all(needle in line for needle in needles), line


def test_config_that_is_a_folder_is_one_line(spots: dict[str, Path], tmp_path: Path) -> None:
    argv = ["train", str(spots["root"]), "--data", str(spots["root"]), "--out", str(tmp_path / "run")]
    line = assert_one_error_line(run_cxrmtl(argv), str(spots["root"]))
    assert "is a folder, not a config file" in line


def test_data_check_without_any_image_is_a_broken_layout(tmp_path: Path) -> None:
    """Metadata fine, not one listed image on disk: exit 2 (the report still printed), unless --metadata-only."""
    root = write_tiny_nih(tmp_path / "nih", patients=4)
    shutil.rmtree(root / "images")
    result = run_cxrmtl(["data", "check", str(root)])
    line = assert_one_error_line(result, "none of the 8 images listed in Data_Entry_2017_v2020.csv exists")
    assert "--metadata-only" in line and "total: 8 images" in result.stdout
    assert run_cxrmtl(["data", "check", str(root), "--metadata-only"]).returncode == 0


def test_data_check_with_some_images_is_still_usable(tmp_path: Path) -> None:
    root = write_tiny_nih(tmp_path / "nih", patients=4)
    for png in sorted((root / "images").iterdir())[1:]:
        png.unlink()
    result = run_cxrmtl(["data", "check", str(root)])
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system to provoke a real ENOSPC")
def test_full_disk_oserror_becomes_one_line_naming_the_file() -> None:
    """A real ENOSPC (writing to /dev/full) and a real ENOTDIR map to one line naming the file; other errors don't."""
    with pytest.raises(OSError) as full, open("/dev/full", "wb", buffering=0) as fh:
        fh.write(b"x")
    error = OSError(full.value.errno, full.value.strerror, "/dev/full")
    message = os_error_message(error)
    assert full.value.errno == errno.ENOSPC and message is not None
    assert message.startswith("/dev/full: no space left on device") and "free on its file system" in message
    assert os_error_message(OSError(errno.ENOENT, "No such file or directory", "x")) is None  # a bug: traceback


def test_one_line_folds_line_breaks() -> None:
    assert one_line("a\n  b\n\nc ") == "a b c"


def tiny_disk_prefix(mount: Path, size: str) -> list[str] | None:
    """Run under ``unshare -m`` with a ``size`` tmpfs at ``mount`` (a private mount, gone with the process): a real
    full disk. None where this process may not create mount namespaces (not root, or a locked-down container)."""
    unshare = shutil.which("unshare")
    if unshare is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    mount.mkdir(parents=True, exist_ok=True)
    script = f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(mount))} && exec \"$@\""
    probe = subprocess.run([unshare, "-m", "sh", "-c", script, "sh", "true"], capture_output=True, check=False)
    return [unshare, "-m", "sh", "-c", script, "sh"] if probe.returncode == 0 else None


@pytest.mark.parametrize(("command", "size", "needles"), [
    ("cache build", "32k", ("images.u8: no space left on device (needs about 49.2 kB, ", " free)")),
    ("train", "300k", ("checkpoints/last.pt: no space left on device", "free on its file system")),
])
def test_full_disk_is_one_line_naming_the_file(command: str, size: str, needles: tuple[str, ...],
                                               spots: dict[str, Path], tmp_path: Path) -> None:
    prefix = tiny_disk_prefix(tmp_path / "disk", size)
    if prefix is None:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount namespaces) to fill a disk for real")
    data = write_tiny_nih(tmp_path / "nih")  # 48 images of 32 x 32 px: a 49,152-byte cache
    args = {
        "cache build": ["cache", "build", str(data), str(tmp_path / "disk" / "cache"), "--size", "32",
                        "--no-progress"],
        "train": ["train", str(spots["cfg"]), "--data", str(data), "--out", str(tmp_path / "disk" / "run"),
                  "--cache", str(tmp_path / "cache"), "--device", "cpu", "--max-steps", "4"],
    }[command]
    result = subprocess.run([*prefix, sys.executable, "-m", "cxrmtl", *args], capture_output=True, text=True,
                            check=False, env=cli_env(), timeout=300)
    line = assert_one_error_line(result, str(tmp_path / "disk"))
    assert all(needle in line for needle in needles), line
