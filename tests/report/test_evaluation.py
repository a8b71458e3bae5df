"""`cxrmtl evaluate` end to end: a tiny real training run, then evaluation through the CLI and the library."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrmtl.errors import EvaluationError
from cxrmtl.eval.evaluate import EvalOptions
from cxrmtl.eval.thresholds import load_thresholds
from cxrmtl.report.evaluation import evaluate_run
from cxrmtl.report.render import load_section, table_section

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
LABELS = ("No Finding", "Effusion", "Cardiomegaly", "Effusion|Cardiomegaly", "Atelectasis")


def _write_nih(root: Path, *, patients: int = 48, per_patient: int = 2, size: int = 32) -> Path:
    """A tiny NIH-layout folder whose images carry the Effusion / Cardiomegaly labels as brightness patterns."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    lines, names = [HEADER], []
    for pid in range(1, patients + 1):
        sex, view = rng.choice(["M", "F"]), rng.choice(["PA", "AP"])
        for follow in range(per_patient):
            name, text = f"{pid:08d}_{follow:03d}.png", str(rng.choice(LABELS))
            pixels = rng.normal(100, 20, (size, size)) + 60 * ("Effusion" in text)
            pixels[:, : size // 2] += 50 * ("Cardiomegaly" in text)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / "images" / name)
            lines.append(f"{name},{text},{follow},{pid},{rng.integers(20, 90)},{sex},{view},{size},{size},0.14,0.14")
            names.append(name)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    cut = per_patient * (patients * 2 // 3)
    (root / "train_val_list.txt").write_text("\n".join(names[:cut]))
    (root / "test_list.txt").write_text("\n".join(names[cut:]))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from cxrmtl.config import Config, apply_overrides
    from cxrmtl.train.loop import train

    base = tmp_path_factory.mktemp("evalrun")
    root = _write_nih(base / "nih")
    cfg = apply_overrides(Config(), [
        "name=tiny", "seed=1", "data.image_size=32", "data.val_fraction=0.3", "model.backbone=test_convnext",
        "model.channels_last=false", "tasks.specs=[findings:Effusion, findings:Hernia, abnormal, age, sex, view]",
        "optim.lr=0.003",
        "optim.warmup_steps=2", "train.epochs=2", "train.batch_size=16", "train.eval_batch_size=16",
        "train.progress=false", "train.log_every=1",
    ])
    train(cfg, data_root=root, out=base / "run")
    return root, base / "run"


@pytest.mark.slow
def test_cli_evaluate_writes_everything(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from cxrmtl.cli import main

    root, run = trained
    section = tmp_path / "ablation.json"
    section.write_text(json.dumps(table_section("Ablation", ["variant", "AUROC"], [["multitask", 0.8]]).to_json()))
    argv = ["cxrmtl", "evaluate", str(run), "--data", str(root), "--bootstrap", "50", "--section", str(section)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", argv)
        main()
    out = run / "eval" / "test"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["thresholds_from"] == "val"
    data = metrics["data"]  # a tiny folder is never compared with the literature; its counts are the ones evaluated
    assert data["kind"] == "subset" and data["comparable"] is False and data["split"] == "test"
    assert (data["n_images"], data["n_patients"]) == (metrics["n_images"], metrics["n_patients"])
    assert f"{metrics['n_images']} images, {metrics['n_patients']} patients" in data["banner"]
    # Single-finding tasks (few figure panels keep this test fast) are gathered into the findings view.
    assert set(metrics["tasks"]) == {"findings:Effusion", "findings:Hernia", "abnormal", "age", "sex", "view"}
    eff = metrics["tasks"]["findings:Effusion"]["outputs"]["Effusion"]
    assert eff["auroc"]["value"] is not None and eff["n_pos"] > 0
    assert metrics["tasks"]["findings:Hernia"]["outputs"]["Hernia"]["auroc"]["value"] is None  # no positives: null
    assert metrics["findings"]["names"] == ["Effusion", "Hernia"]
    assert metrics["findings"]["auroc"]["Effusion"]["value"] == eff["auroc"]["value"]
    assert metrics["tasks"]["age"]["outputs"]["age"]["mae"]["value"] > 0
    page = (out / "report.html").read_text()
    assert data["banner"] in page and "Ablation" in page and "Training curves" in page
    assert "Published results (reference only)" in page and "ours (" not in page
    thresholds = load_thresholds(run)
    assert thresholds is not None and thresholds.get("findings:Effusion", "Effusion") is not None
    assert thresholds.split == "val"  # predict / triage / serve read these through load_thresholds only


@pytest.mark.slow
def test_library_evaluate_val_split_and_errors(trained: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = trained
    result = evaluate_run(run, data_root=root, split="val", data_kind="phantom", figures=False,
                          options=EvalOptions(n_bootstrap=50))
    assert result.report_html.is_file() and result.metrics_path.parent.name == "val"
    assert result.evaluation.metrics["data"]["kind"] == "phantom"
    assert "PHANTOM DATA" in result.report_md.read_text() and "<img" not in result.report_html.read_text()
    with pytest.raises(EvaluationError, match="split"):
        evaluate_run(run, data_root=root, split="train")
    with pytest.raises(EvaluationError, match="data kind"):
        evaluate_run(run, data_root=root, data_kind="real")
    with pytest.raises(EvaluationError, match="complete official test split"):  # a tiny folder is never "nih"
        evaluate_run(run, data_root=root, data_kind="nih", figures=False, options=EvalOptions(n_bootstrap=10))


@pytest.mark.slow
def test_phantom_marker_in_the_data_folder_labels_the_evaluation(trained: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    root, run = trained
    marked = tmp_path / "marked"
    shutil.copytree(root, marked)
    (marked / "phantom.json").write_text("{}")
    result = evaluate_run(run, data_root=marked, split="test", figures=False, options=EvalOptions(n_bootstrap=10),
                          cache_dir=tmp_path / "cache")
    data = result.evaluation.metrics["data"]
    assert data["kind"] == "phantom" and data["banner"].startswith("PHANTOM DATA")
    assert "PHANTOM DATA" in result.report_md.read_text()


def test_cli_reports_bad_run_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cxrmtl.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", ["cxrmtl", "evaluate", str(tmp_path / "nope"), "--data", str(tmp_path)])
        with pytest.raises(SystemExit) as exc:
            main()
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_bad_section_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("{")
    with pytest.raises(EvaluationError, match=r"s\.json"):
        load_section(path)
