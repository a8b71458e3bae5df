"""MODEL_CARD.md: written by evaluate_run for every evaluated run (banner on phantom data), and its contents."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_synth import make_split
from trainkit import tiny_config, write_tiny_nih

from cxrmtl.config import Config, apply_overrides
from cxrmtl.eval.evaluate import EvalOptions, evaluate_outputs
from cxrmtl.labels import FINDINGS
from cxrmtl.report.evaluation import evaluate_run
from cxrmtl.report.model_card import MODEL_CARD_FILE, model_card_markdown, write_model_card


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from cxrmtl.train.loop import train

    base = tmp_path_factory.mktemp("card")
    root = write_tiny_nih(base / "data", patients=24)
    (root / "phantom.json").write_text('{"generator": "cxrmtl phantom", "patients": 24, "size": 32, "seed": 0}\n')
    train(tiny_config("train.epochs=1"), data_root=root, out=base / "run")
    return root, base / "run"


def test_evaluate_writes_a_phantom_model_card(phantom_run: tuple[Path, Path]) -> None:
    root, run = phantom_run
    result = evaluate_run(run, data_root=root, figures=False, options=EvalOptions(n_bootstrap=20))
    card = (result.out_dir / MODEL_CARD_FILE).read_text()
    lines = card.splitlines()
    assert lines[0] == f"# Model card: {run.name}"
    assert lines[2].startswith("> **PHANTOM DATA")  # the banner, at the top
    assert "not comparable to published numbers" in lines[2]
    assert "## Intended use" in card and "**not a diagnosis**" in card
    assert "PHANTOM (synthetic images), test split" in card and "built-in PHANTOM" in card
    table = card[card.index("## Results per finding"):card.index("## Calibration")]
    assert "| finding | positives | prevalence | AUROC [95% CI] | AUPRC [95% CI] |" in table
    rows = [line for line in table.splitlines() if line.split("|")[1:2] and line.split("|")[1].strip() in FINDINGS]
    assert rows and any("[" in line for line in rows)  # point estimates with their CIs (n/a where undefined)
    assert "## Subgroups" in card and "## Auxiliary tasks" in card and "MAE (years)" in card
    assert "Oakden-Rayner L., \"Exploring large-scale public medical image datasets\", Academic Radiology" in card
    assert "ACM CHIL 2020" in card and "AP/PA view shift" in card
    assert f"cxrmtl phantom {root} --patients 24 --size 32 --seed 0" in card
    assert f"cxrmtl train {run / 'config.yaml'} --data {root}" in card and "--bootstrap 20" in card


def _nih_metrics() -> dict:
    val, test = make_split("val", seed=1), make_split("test", seed=2, first_patient=500)
    info = {"run": "runs/dn121", "checkpoint": "runs/dn121/checkpoints/best.pt", "epoch": 9, "step": 12000,
            "code_version": "0.1.0", "created": "2026-12-01T00:00:00Z",
            "data": {"root": "/data/nih", "kind": "nih", "n_index_images": 112120, "expert_labels": None}}
    return evaluate_outputs(test, val=val, options=EvalOptions(n_bootstrap=30), info=info).metrics


def test_card_for_the_real_release(tmp_path: Path) -> None:
    cfg = apply_overrides(Config(), ["model.backbone=densenet121", "model.pretrained=true", "data.image_size=224",
                                     "tasks.specs=[findings, abnormal, age, sex, view]"])
    metrics = _nih_metrics()
    path = write_model_card(Path("runs/dn121"), metrics, out=tmp_path / MODEL_CARD_FILE, config=cfg,
                            data_description="Downloaded with cxrmtl download (manifest verified).")
    card = path.read_text()
    assert "> **" not in card.split("## Model")[0]  # the full release on the test split: no warning banner
    assert "NIH ChestX-ray14, official test split" in card and "densenet121 (timm), 1 input channel, timm ImageNet" \
        in card
    rows = [line for line in card.splitlines() if line.split("|")[1:2] and line.split("|")[1].strip() in FINDINGS]
    assert {line.split("|")[1].strip() for line in rows} >= set(FINDINGS[:13])
    assert "Hernia | 0 |" in card and "n/a" in card  # no positives: undefined, said so
    assert "## Calibration" in card and "ECE after T" in card
    assert "Downloaded with cxrmtl download" in card
    assert "cxrmtl download /data/nih" in card and "cxrmtl cache build /data/nih CACHE --size 224" in card


def test_card_on_the_val_split_warns(tmp_path: Path) -> None:
    metrics = {**_nih_metrics(), "split": "val"}
    card = model_card_markdown(Path("r"), metrics, config=Config())
    assert "> **Evaluated on the val split, not the official test split**" in card
