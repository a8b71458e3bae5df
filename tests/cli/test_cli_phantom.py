"""`cxrmtl phantom` end to end: writes the NIH layout that `cxrmtl data check` accepts; bad options fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from cxrmtl.cli import app

runner = CliRunner()


def test_phantom_then_data_check_accepts_it(tmp_path: Path) -> None:
    out = tmp_path / "nih"
    result = runner.invoke(
        app,
        [
            "phantom",
            str(out),
            "--patients",
            "6",
            "--size",
            "48",
            "--seed",
            "2",
            "--workers",
            "1",
            "--no-progress",
            "--prevalence",
            "real",
            "--label-noise",
            "0.1",
            "--difficulty",
            "0.3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and (out / "Data_Entry_2017.csv").is_file()
    check = runner.invoke(app, ["data", "check", str(out), "--json"])
    assert check.exit_code == 0, check.output
    report = json.loads(check.output)
    n_rows = len((out / "Data_Entry_2017.csv").read_text().splitlines()) - 1
    assert report["total"] == {"images": n_rows, "patients": 6}
    assert report["images"]["found"] == n_rows
    assert report["images"]["missing"]["count"] == 0 and report["images"]["unreadable"]["count"] == 0
    assert report["unlisted_rows"]["count"] == 0 and report["list_names_not_in_csv"]["count"] == 0
    official = report["official"]
    assert official["train_val"]["images"] + official["test"]["images"] == n_rows


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxrmtl", *args], capture_output=True, text=True, check=False)


def test_bad_option_exits_2_naming_the_option(tmp_path: Path) -> None:
    result = _run("phantom", str(tmp_path / "x"), "--difficulty", "1.5", "--no-progress")
    assert result.returncode == 2
    assert "difficulty" in result.stderr and "Traceback" not in result.stderr


def test_non_empty_folder_exits_2(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    result = _run("phantom", str(tmp_path), "--patients", "1", "--size", "48", "--no-progress")
    assert result.returncode == 2 and "not empty" in result.stderr
