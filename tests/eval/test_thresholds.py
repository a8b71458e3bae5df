"""eval.thresholds: Youden and target-sensitivity rules, metrics at a threshold, RUN/thresholds.json round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrmtl.errors import EvaluationError, RunError
from cxrmtl.eval.thresholds import (
    choose_thresholds,
    load_thresholds,
    operating_metrics,
    save_thresholds,
    sensitivity_threshold,
    youden_threshold,
)

SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
LABELS = np.array([0, 0, 1, 0, 1, 0, 1, 1])


def test_youden_picks_the_best_j_by_hand() -> None:
    # J by threshold: 0.9 -> .25, 0.8 -> .5, 0.7 -> .25, 0.6 -> .5, 0.4 -> .25, 0.3 -> .5. Three maxima: roc_curve
    # visits thresholds from high to low and argmax keeps the first, i.e. the most specific one, 0.8.
    thr = youden_threshold(SCORES, LABELS)
    assert thr == pytest.approx(0.8)
    m = operating_metrics(SCORES, LABELS, thr)
    assert m["sensitivity"] == pytest.approx(0.5) and m["specificity"] == 1.0
    unique = LABELS.copy()
    unique[3] = 1  # 5 positives, 3 negatives: J(0.3) = 1 - 1/3 = 2/3 is now the unique maximum (J(0.8) = 0.4)
    assert youden_threshold(SCORES, unique) == pytest.approx(0.3)


def test_sensitivity_threshold_is_most_specific_reaching_target() -> None:
    thr = sensitivity_threshold(SCORES, LABELS, target=0.9)
    assert thr == pytest.approx(0.3)  # the only way to catch all 4 positives with the fewest negatives
    m = operating_metrics(SCORES, LABELS, thr)
    assert m["sensitivity"] == 1.0 and m["specificity"] == pytest.approx(0.5)
    assert m["ppv"] == pytest.approx(4 / 6) and m["npv"] == 1.0 and m["f1"] == pytest.approx(0.8)


def test_undefined_without_both_classes() -> None:
    assert youden_threshold(SCORES, np.zeros(8)) is None
    assert sensitivity_threshold(SCORES, np.ones(8)) is None
    assert operating_metrics(SCORES, LABELS, None) == dict.fromkeys(("sensitivity", "specificity", "ppv", "npv", "f1"))


def test_metric_without_denominator_is_none() -> None:
    m = operating_metrics(SCORES, LABELS, 2.0)  # nothing called positive
    assert m["ppv"] is None and m["sensitivity"] == 0.0 and m["specificity"] == 1.0


def test_bad_target() -> None:
    with pytest.raises(EvaluationError, match="target_sensitivity"):
        sensitivity_threshold(SCORES, LABELS, target=1.5)


def test_round_trip_and_lookup(tmp_path: Path) -> None:
    s = np.stack([SCORES, SCORES[::-1]], axis=1)
    y = np.stack([LABELS, np.zeros(8)], axis=1)
    chosen = choose_thresholds({"findings": (s, y, np.ones_like(y, bool), ("Effusion", "Hernia"))})
    path = save_thresholds(tmp_path, chosen, code_version="test")
    doc = json.loads(path.read_text())
    assert doc["schema"] == 1 and doc["split"] == "val" and doc["methods"]["youden"]["findings"]["Hernia"] is None
    loaded = load_thresholds(tmp_path)
    assert loaded is not None
    assert loaded.get("findings", "Effusion") == pytest.approx(0.8)
    assert loaded.get("findings", "Effusion", "sensitivity") == pytest.approx(0.3)
    assert loaded.get("findings", "Hernia") is None and loaded.get("age", "age") is None
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert load_thresholds(tmp_path) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not readable JSON"),
        ('{"schema": 2, "methods": {}}', "schema"),
        ('{"schema": 1, "methods": {"youden": {"findings": {"Mass": "high"}}}}', "methods.youden.findings.Mass"),
        ('{"schema": 1, "methods": {"youden": {"findings": {"Mass": 0.5}}}, "default": "x"}', "default method"),
        ('{"schema": 1, "methods": []}', "methods"),
        ('{"findings": {"Effusion": 0.3}}', "schema"),  # a bare task -> threshold map: evaluate never writes that
    ],
)
def test_malformed_file_names_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "thresholds.json").write_text(text)
    with pytest.raises(RunError, match=message):
        load_thresholds(tmp_path)


def test_load_thresholds_is_the_only_reader_of_the_file() -> None:
    """Everything that needs operating points goes through the schema-checked reader; no second parser drifts."""
    src = Path(__file__).resolve().parents[2] / "src" / "cxrmtl"
    # the reader/writer, the file name, and eval/thresholds.py which re-exports the reader
    allowed = {src / "runs" / "operating.py", src / "runs" / "layout.py", src / "eval" / "thresholds.py"}
    mentions = [
        f"{path.relative_to(src)}:{n}"
        for path in sorted(src.rglob("*.py")) if path not in allowed
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "THRESHOLDS_FILE" in line or ("thresholds.json" in line and ("open(" in line or "read_" in line))
    ]
    assert not mentions, f"read RUN/thresholds.json through cxrmtl.runs.operating.load_thresholds: {mentions}"
