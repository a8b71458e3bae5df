"""`simulate_run` on a real (tiny) trained run: both prediction sources, the recorded data folder, the outputs and
the evaluation report's triage section."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from trainkit import tiny_config, write_tiny_nih

from cxrmtl.errors import ConfigError, RunError
from cxrmtl.eval.thresholds import Thresholds, load_thresholds
from cxrmtl.triage.run import build_pool, predict_with_model, read_predictions_csv, simulate_run
from cxrmtl.triage.simulate import SimulationOptions
from cxrmtl.triage.urgency import default_urgency_config

FAST = SimulationOptions(seeds=4, hours=3)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny NIH-layout folder where "Hernia" is renamed Pneumothorax (so the critical group has studies), a run
    trained on it for one epoch, evaluated (thresholds on val, no figures)."""
    from cxrmtl.eval.evaluate import EvalOptions
    from cxrmtl.report.evaluation import evaluate_run
    from cxrmtl.train.loop import train

    base = tmp_path_factory.mktemp("triage")
    root = write_tiny_nih(base / "nih", patients=32)
    entry = root / "Data_Entry_2017_v2020.csv"
    entry.write_text(entry.read_text().replace("Hernia", "Pneumothorax"))
    train(tiny_config("train.epochs=1"), data_root=root, out=base / "run")
    evaluate_run(base / "run", data_root=root, figures=False, options=EvalOptions(n_bootstrap=20))
    return root, base / "run"


@pytest.mark.slow
def test_simulate_run_writes_everything_and_labels_the_data(evaluated: tuple[Path, Path]) -> None:
    root, run = evaluated
    result = simulate_run(run, data_root=root, options=FAST)
    assert result.out_dir == run / "triage" / "test"
    doc = json.loads(result.json_path.read_text())
    assert doc["data_kind"] == "subset" and doc["split"] == "test"
    assert doc["pool"]["urgency_basis"] == "mixed"  # some findings have no positive on val: no threshold
    assert doc["pool"]["true_positives"]["Pneumothorax"] > 0
    assert set(doc["policies"]) == {"fifo", "urgency", "urgency_upper_limit"}
    assert doc["goal"]["met"] in (True, False) and "Baltruschat" in doc["goal"]["source"]
    md = result.markdown_path.read_text()
    assert "NIH-layout subset, test split" in md and ("Goal MET" in md or "Goal NOT MET" in md)
    assert result.figure_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "goal" in result.summary and "x FIFO" in result.summary


@pytest.mark.slow
def test_phantom_marker_labels_every_output(evaluated: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = evaluated
    (root / "phantom.json").write_text("{}")
    try:
        result = simulate_run(run, data_root=root, options=FAST, out=tmp_path / "t")
    finally:
        (root / "phantom.json").unlink()
    section = json.loads(result.section_path.read_text())
    assert "PHANTOM" in result.markdown_path.read_text() and "PHANTOM" in section["note"]
    assert all("PHANTOM" in f["caption"] for f in section["figures"])
    assert result.summary.startswith("triage (PHANTOM, test split)")


@pytest.mark.slow
def test_predictions_csv_gives_the_same_pool_as_the_model(evaluated: tuple[Path, Path]) -> None:
    import pandas as pd

    from cxrmtl.data.nih import load_index

    root, run = evaluated
    config = default_urgency_config()
    model_pool, facts = build_pool(run, data_root=root, split="test", config=config)
    assert facts["predictions"].endswith("on test")
    # predictions.csv as evaluation writes it: image, patient, <Finding>, <Finding>_positive (empty without a
    # threshold), ..., calibrated.
    thr = load_thresholds(run)
    cfg = tiny_config("train.epochs=1")
    index = load_index(root, val_fraction=cfg.data.val_fraction, split_seed=cfg.data.split_seed)
    preds = predict_with_model(run, index, data_root=root, cache_dir=None, split="test", which="best",
                               device="cpu", batch_size=16)
    table: dict[str, list] = {"image": list(preds.images), "patient": [0] * len(preds.images)}
    for k, n in enumerate(preds.names):
        t = thr.get("findings", n)
        table[n] = preds.probabilities[:, k].tolist()
        table[f"{n}_positive"] = [None if t is None else bool(p >= t) for p in preds.probabilities[:, k]]
    table["calibrated"] = [False] * len(preds.images)
    csv = run / "eval" / "test" / "predictions.csv"
    pd.DataFrame(table).to_csv(csv, index=False)
    try:
        csv_pool, csv_facts = build_pool(run, data_root=root, split="test", config=config)
    finally:
        csv.unlink()
    assert csv_facts["predictions"] == str(csv)
    assert list(csv_pool.images) == list(model_pool.images) and csv_pool.names == model_pool.names
    np.testing.assert_array_equal(csv_pool.truth, model_pool.truth)
    np.testing.assert_allclose(csv_pool.urgency, model_pool.urgency, atol=1e-7)
    np.testing.assert_array_equal(csv_pool.level, model_pool.level)
    # A file without finding columns is not used: the model predicts instead (the index then finds the images).
    csv.write_text("image,foo\nx.png,1\n")
    try:
        _, facts = build_pool(run, data_root=root, split="test", config=config)
    finally:
        csv.unlink()
    assert facts["predictions"].endswith("on test")


@dataclass(frozen=True)
class TemperedThresholds(Thresholds):
    """RUN/thresholds.json with temperatures, as `cxrmtl evaluate` writes it once calibration is recorded there."""

    temperatures: dict[str, dict[str, float | None]] = field(default_factory=dict)


def test_calibrated_csv_is_mapped_back_to_the_threshold_scale(tmp_path: Path) -> None:
    import pandas as pd

    from cxrmtl.eval.calibration import apply_temperature

    raw = np.array([0.1, 0.3, 0.6, 0.9])
    cal = apply_temperature(raw, 2.0)
    csv = tmp_path / "predictions.csv"
    pd.DataFrame({"image": list("abcd"), "patient": [1, 2, 3, 4], "Effusion": cal,
                  "Effusion_positive": ["True", "False", "True", "True"], "calibrated": [True] * 4}).to_csv(csv)

    @dataclass
    class Index:
        table: pd.DataFrame

    thr = TemperedThresholds(methods={"youden": {"findings": {"Effusion": 0.5}}},
                             temperatures={"findings": {"Effusion": 2.0}})
    preds = read_predictions_csv(csv, Index(pd.DataFrame({"image": list("dcba")})), thr)
    np.testing.assert_allclose(preds.probabilities[:, 0], raw, atol=1e-9)
    assert preds.rows.tolist() == [3, 2, 1, 0] and preds.positive[:, 0].tolist() == [True, False, True, True]
    with pytest.raises(RunError, match="not in the data folder"):
        read_predictions_csv(csv, Index(pd.DataFrame({"image": list("abc")})), thr)


@pytest.mark.slow
def test_recorded_data_root_and_the_report_section(evaluated: tuple[Path, Path]) -> None:
    from cxrmtl.eval.evaluate import EvalOptions
    from cxrmtl.report.evaluation import evaluate_run

    root, run = evaluated
    record = run / "data.json"  # written by `train`: the run knows its data folder
    saved = record.read_bytes()
    try:
        record.unlink()
        with pytest.raises(ConfigError, match="--data"):
            simulate_run(run, options=FAST)
    finally:
        record.write_bytes(saved)
    result = simulate_run(run, options=FAST)
    assert result.doc["data_root"] == str(root.resolve())
    report = evaluate_run(run, data_root=root, figures=False, options=EvalOptions(n_bootstrap=20))
    assert "Triage: reading-room simulation" in report.report_md.read_text()
    # A simulation older than the model is left out of the next report.
    stamp = result.section_path.stat().st_mtime - 10
    os.utime(result.section_path, (stamp, stamp))
    report = evaluate_run(run, data_root=root, figures=False, options=EvalOptions(n_bootstrap=20))
    assert "Triage: reading-room simulation" not in report.report_md.read_text()
