"""``cxrmtl data check``: text and JSON reports, image checks, exit status for broken layouts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrmtl import labels
from cxrmtl.cli import app

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
# image, labels, patient: patients 1-2 in train_val, 3 in test, one CSV row in neither list.
ROWS = [
    ("00000001_000.png", "Effusion", 1),
    ("00000001_001.png", "No Finding", 1),
    ("00000002_000.png", "Mass|Effusion", 2),
    ("00000003_000.png", "Pneumothorax", 3),
    ("00000004_000.png", "No Finding", 4),
]


def make_root(root: Path, *, test: tuple[str, ...] = ("00000003_000.png",)) -> Path:
    """A tiny NIH folder: 2 good PNGs, 1 truncated, 1 text file named .png, 1 image missing."""
    lines = [HEADER] + [f"{name},{text},0,{pid},40,F,PA,1024,1024,0.14,0.14" for name, text, pid in ROWS]
    (root / "images").mkdir(parents=True)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    (root / labels.TRAIN_VAL_LIST).write_text("\n".join([r[0] for r in ROWS[:3]] + ["99999999_000.png"]))
    (root / labels.TEST_LIST).write_text("\n".join(test))
    gray = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    for name in (ROWS[0][0], ROWS[3][0]):
        Image.fromarray(gray).save(root / "images" / name)
    full = (root / "images" / ROWS[0][0]).read_bytes()
    (root / "images" / ROWS[1][0]).write_bytes(full[: len(full) // 2])
    (root / "images" / ROWS[2][0]).write_text("not an image")
    return root


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["data", "check", *args])
    return result.exit_code, result.stdout, result.stderr


def test_json_report(tmp_path: Path) -> None:
    code, out, _ = run_cli(str(make_root(tmp_path)), "--json", "--val-fraction", "0")
    assert code == 0
    report = json.loads(out)
    assert report["total"] == {"images": 5, "patients": 4}
    assert report["official"] == {"train_val": {"images": 3, "patients": 2}, "test": {"images": 1, "patients": 1}}
    assert report["splits"]["train"]["findings"]["Effusion"] == {"count": 2, "prevalence": round(2 / 3, 6)}
    assert report["splits"]["train"]["findings"][labels.NO_FINDING]["count"] == 1
    assert report["splits"]["test"]["findings"]["Pneumothorax"]["prevalence"] == 1.0
    assert report["unlisted_rows"] == {"count": 1, "examples": ["00000004_000.png"]}
    assert report["list_names_not_in_csv"] == {"count": 1, "examples": ["99999999_000.png"]}
    images = report["images"]
    assert images["found"] == 4 and images["missing"] == {"count": 1, "examples": ["00000004_000.png"]}
    reasons = {Path(item["path"]).name: item["reason"] for item in images["unreadable"]["examples"]}
    assert images["unreadable"]["count"] == 2
    assert "truncated PNG" in reasons["00000001_001.png"] and "not a PNG" in reasons["00000002_000.png"]


def test_decode_mode_agrees_on_this_folder(tmp_path: Path) -> None:
    code, out, _ = run_cli(str(make_root(tmp_path)), "--json", "--decode", "--workers", "2")
    images = json.loads(out)["images"]
    assert code == 0 and images["mode"] == "decode" and images["unreadable"]["count"] == 2


def test_text_report_lists_and_truncates(tmp_path: Path) -> None:
    code, out, _ = run_cli(str(make_root(tmp_path)), "--examples", "1")
    assert code == 0
    assert "total: 5 images, 4 patients" in out
    assert "official test: 1 images, 1 patients" in out
    assert "unreadable images (header check): 2" in out and "(+1 more)" in out
    assert "missing images: 1" in out and "Pneumothorax" in out


def test_metadata_only_skips_images(tmp_path: Path) -> None:
    code, out, _ = run_cli(str(make_root(tmp_path)), "--json", "--metadata-only")
    assert code == 0 and json.loads(out)["images"] == {"checked": False, "mode": "metadata-only"}


def test_broken_layout_exits_2_with_one_line(tmp_path: Path) -> None:
    root = make_root(tmp_path, test=("00000003_000.png", "00000002_000.png"))  # patient 2 also in train_val
    (root / labels.TRAIN_VAL_LIST).write_text("00000001_000.png\n00000001_001.png")
    (root / labels.TEST_LIST).write_text("00000003_000.png\n00000002_000.png\n00000001_000.png")
    proc = subprocess.run(
        [sys.executable, "-m", "cxrmtl", "data", "check", str(root)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "in both" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_root_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cxrmtl", "data", "check", str(tmp_path / "nope"), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "not a folder" in proc.stderr


def test_real_metadata_only(nih_shared: Path) -> None:
    """The acceptance numbers of the issue: 112,120 images, 30,805 patients, 86,524/25,596 and 28,008/2,797."""
    code, out, _ = run_cli(str(nih_shared), "--json", "--metadata-only")
    assert code == 0
    report = json.loads(out)
    assert report["total"] == {"images": labels.NIH_NUM_IMAGES, "patients": labels.NIH_NUM_PATIENTS}
    for name, (images, patients) in labels.NIH_SPLIT_COUNTS.items():
        assert report["official"][name] == {"images": images, "patients": patients}
    assert report["splits"]["test"]["findings"]["Effusion"]["count"] == 4658
    assert report["unlisted_rows"]["count"] == 0 and report["list_names_not_in_csv"]["count"] == 0


@pytest.mark.slow
def test_real_images_all_readable(nih_shared: Path) -> None:
    code, out, _ = run_cli(str(nih_shared), "--json", "--decode", "--workers", "2", "--examples", "0")
    images = json.loads(out)["images"]
    assert code == 0 and images["found"] == 225 and images["unreadable"]["count"] == 0
    assert images["missing"]["count"] == labels.NIH_NUM_IMAGES - 225
