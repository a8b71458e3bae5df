"""`cxrmtl predict` and `cxrmtl export` as a user types them: evaluate -> predict gives predictions.csv's numbers,
formats, exit codes, a folder of good and bad files, 16-bit PNG and DICOM MONOCHROME1 input, heatmaps."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from predictkit import write_bad_files, write_dicom
from trainkit import run_cli, tiny_config, write_tiny_nih

from cxrmtl import labels as L
from cxrmtl.train.loop import train

TOL = 1e-5  # issue 9: predict on an image of the evaluated split gives predictions.csv's numbers


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny trained run evaluated through the CLI (thresholds.json with temperatures, predictions.csv)."""
    base = tmp_path_factory.mktemp("cli_predict")
    nih = write_tiny_nih(base / "nih", seed=4)
    train(tiny_config("train.epochs=2"), data_root=nih, out=base / "run", device="cpu")
    done = run_cli(["evaluate", str(base / "run"), "--data", str(nih), "--bootstrap", "20", "--no-figures"])
    assert done.returncode == 0, done.stderr
    return base / "run", nih


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_predict_json_gives_the_numbers_of_predictions_csv(evaluated: tuple[Path, Path], backend: str) -> None:
    run, nih = evaluated
    table = {row["image"]: row for row in _csv(run / "eval" / "test" / "predictions.csv")}
    assert len(table) == 12 and {"patient_id", "Effusion", "Effusion_positive", "age_years", "p_female"} <= set(
        next(iter(table.values())))
    images = sorted(table)[:6]
    done = run_cli(["predict", str(run), *[str(nih / "images" / n) for n in images], "--json", "--batch-size", "4",
                    "--backend", backend])
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)
    assert [Path(e["path"]).name for e in entries] == images
    for entry in entries:
        row = table[Path(entry["path"]).name]
        assert entry["calibrated"] is True and row["calibrated"] == "True"
        for name in L.FINDINGS:
            point = entry["findings"][name]
            assert point["probability"] == pytest.approx(float(row[name]), abs=TOL), name
            assert str(point["positive"]) == row[f"{name}_positive"] or (point["positive"] is None
                                                                       and row[f"{name}_positive"] == "")
        assert entry["abnormal"]["probability"] == pytest.approx(float(row["abnormal"]), abs=TOL)
        assert entry["age_years"] == pytest.approx(float(row["age_years"]), abs=1e-3)  # years: float32 * 16.6
        assert entry["sex"]["p_female"] == pytest.approx(float(row["p_female"]), abs=TOL)
        assert entry["view"]["p_ap"] == pytest.approx(float(row["p_ap"]), abs=TOL)
        assert entry["threshold_method"] == "youden"


def test_folder_with_good_and_bad_files_16bit_and_monochrome1(evaluated: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = evaluated
    folder = tmp_path / "in"
    bad = write_bad_files(folder / "bad")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    Image.fromarray(255 - pixels).save(folder / "plain.png")
    write_dicom(folder / "mono1.dcm", pixels, photometric="MONOCHROME1")  # displays as 255 - pixels
    wide = (rng.random((40, 40)) * 60_000).astype(np.uint16)
    wide[0, 0], wide[0, 1] = 0, 60_000
    Image.fromarray(wide).save(folder / "sixteen.png")
    Image.fromarray(np.rint(wide / 60_000 * 255).astype(np.uint8)).save(folder / "eight.png")
    (folder / "notes.txt").write_text("skipped: neither an image name nor image content")
    done = run_cli(["predict", str(run), str(folder), "--json", "--workers", "2", "--backend", "torch"])
    assert done.returncode == 1, done.stderr
    assert "4 of 8 file(s) could not be read" in done.stderr
    entries = {Path(e["path"]).name: e for e in json.loads(done.stdout)}
    assert set(entries) == {*bad, "plain.png", "mono1.dcm", "sixteen.png", "eight.png"}
    for name, word in bad.items():
        assert "findings" not in entries[name] and word in entries[name]["error"].lower()
    for a, b in (("plain.png", "mono1.dcm"), ("eight.png", "sixteen.png")):
        pa, pb = entries[a]["findings"], entries[b]["findings"]
        assert max(abs(pa[n]["probability"] - pb[n]["probability"]) for n in L.FINDINGS) < 0.02, (a, b)
    np.testing.assert_allclose(  # MONOCHROME1 decodes to exactly the PNG's pixels (batch position aside)
        [entries["plain.png"]["findings"][n]["probability"] for n in L.FINDINGS],
        [entries["mono1.dcm"]["findings"][n]["probability"] for n in L.FINDINGS], rtol=0, atol=1e-6)


def test_csv_table_and_usage_errors(evaluated: tuple[Path, Path], tmp_path: Path) -> None:
    run, nih = evaluated
    image = sorted((nih / "images").glob("*.png"))[0]
    missing = tmp_path / "gone.png"
    (tmp_path / "empty.png").write_bytes(b"")
    done = run_cli(["predict", str(run), str(image), str(tmp_path / "empty.png"), "--csv", "--backend", "torch"])
    assert done.returncode == 1
    rows = list(csv.DictReader(done.stdout.splitlines()))
    assert [Path(r["path"]).name for r in rows] == [image.name, "empty.png"]
    assert rows[0]["error"] == "" and 0 < float(rows[0]["Effusion"]) < 1 and rows[1]["Effusion"] == ""
    assert "empty" in rows[1]["error"]
    table = run_cli(["predict", str(run), str(image), "--backend", "torch"])
    assert table.returncode == 0, table.stderr
    assert "trained on: SUBSET" in table.stdout and "youden thresholds from val" in table.stdout
    assert image.name in table.stdout and "positive:" in table.stdout and "P(female)" in table.stdout
    for args, message in ((["--json", "--csv"], "choose one"), (["--backend", "tpu"], "--backend"),
                          (["--batch-size", "0"], "--batch-size: must be at least 1")):
        bad = run_cli(["predict", str(run), str(image), *args])
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)
    gone = run_cli(["predict", str(run), str(missing)])
    assert gone.returncode == 2 and "gone.png: no such file" in gone.stderr
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    nothing = run_cli(["predict", str(run), str(empty_dir)])
    assert nothing.returncode == 2 and "no image file found" in nothing.stderr
    norun = run_cli(["predict", str(tmp_path), str(image)])
    assert norun.returncode == 2 and "config.yaml" in norun.stderr


@pytest.mark.slow
def test_heatmaps_for_positive_findings(evaluated: tuple[Path, Path], tmp_path: Path) -> None:
    run, nih = evaluated
    images = sorted((nih / "images").glob("*.png"))[:3]
    out = tmp_path / "heat"
    done = run_cli(["predict", str(run), *map(str, images), "--json", "--heatmaps", str(out), "--backend", "onnx"])
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)
    expected = {f"{Path(e['path']).stem}_{n}.png" for e in entries for n, p in e["findings"].items() if p["positive"]}
    assert expected, "the tiny run calls no finding positive on these images"
    assert {p.name for p in out.iterdir()} == expected
    assert sorted(Path(p).name for e in entries for p in e["heatmaps"]) == sorted(expected)
    picture = np.asarray(Image.open(next(out.iterdir())))
    assert picture.ndim == 3 and picture.shape[0] >= 256  # colour overlay, enlarged for reading


@pytest.mark.slow
def test_export_cli_writes_a_usable_file(evaluated: tuple[Path, Path], tmp_path: Path) -> None:
    import onnxruntime as ort

    run, _ = evaluated
    target = tmp_path / "model.onnx"
    done = run_cli(["export", str(run), "--onnx", str(target), "--opset", "17"])
    assert done.returncode == 0, done.stderr
    assert "outputs: findings (findings: 14)" in done.stdout
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    outs = session.run(None, {"image": np.zeros((3, 1, 32, 32), np.float32)})
    assert [o.shape for o in outs] == [(3, 14), (3, 1), (3, 1), (3, 1), (3, 1)]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["cxrmtl.thresholds"])["youden"]["findings"].keys() == set(L.FINDINGS)
    assert json.loads(meta["cxrmtl.temperatures"])["findings"]
    bad = run_cli(["export", str(run), "--onnx", str(target), "--opset", "3"])
    assert bad.returncode == 2 and "opset" in bad.stderr


@pytest.mark.skipif(importlib.util.find_spec("cxrmtl.triage") is None, reason="triage lands with the triage branch")
def test_predict_adds_urgency(evaluated: tuple[Path, Path]) -> None:
    run, nih = evaluated
    image = sorted((nih / "images").glob("*.png"))[0]
    done = run_cli(["predict", str(run), str(image), "--json", "--backend", "torch"])
    assert done.returncode == 0, done.stderr
    urgency = json.loads(done.stdout)[0]["urgency"]
    assert set(urgency) == {"score", "level", "top_finding"} and isinstance(urgency["score"], float)
