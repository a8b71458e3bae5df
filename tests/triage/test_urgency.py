"""Urgency rule: levels, score ordering, thresholds vs probabilities only, and the YAML config with its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrmtl import labels as L
from cxrmtl.errors import ConfigError, EvaluationError
from cxrmtl.eval.thresholds import Thresholds
from cxrmtl.triage.urgency import (
    DEFAULT_CONFIG_FILE,
    UrgencyConfig,
    default_urgency_config,
    finding_thresholds,
    load_urgency_config,
    score_urgency,
    score_urgency_batch,
)

THR = dict.fromkeys(L.FINDINGS, 0.4)


def test_default_weights_follow_the_urgency_order_and_pneumothorax_is_highest() -> None:
    cfg = default_urgency_config()
    assert set(cfg.weights) == set(L.FINDINGS)
    ordered = [cfg.weights[n] for n in L.URGENCY_ORDER]
    assert ordered == sorted(ordered, reverse=True)
    assert max(cfg.weights, key=cfg.weights.get) == "Pneumothorax"
    assert cfg.critical == ("Pneumothorax",)


def test_packaged_yaml_agrees_with_labels() -> None:
    assert load_urgency_config(DEFAULT_CONFIG_FILE) == default_urgency_config()
    assert load_urgency_config(None) == default_urgency_config()


def test_no_positive_finding_is_routine_with_score_zero() -> None:
    u = score_urgency(dict.fromkeys(L.FINDINGS, 0.1), THR)
    assert (u.level, u.score, u.top_finding, u.positives, u.basis) == ("routine", 0.0, None, (), "thresholds")


def test_levels_and_score_tiers() -> None:
    base = dict.fromkeys(L.FINDINGS, 0.0)
    crit = score_urgency({**base, "Pneumothorax": 0.41}, THR)
    urgent = score_urgency({**base, "Effusion": 0.99, "Nodule": 0.9}, THR)
    routine = score_urgency({**base, "Nodule": 0.99}, THR)
    assert (crit.level, crit.top_finding) == ("critical", "Pneumothorax")
    assert (urgent.level, urgent.top_finding, urgent.positives) == ("urgent", "Effusion", ("Effusion", "Nodule"))
    assert (routine.level, routine.top_finding) == ("routine", "Nodule")
    # Every critical study outranks every urgent one, which outranks routine (score = (tier + w p) / 3).
    assert crit.score > urgent.score > routine.score > 0
    assert crit.score == pytest.approx((2 + 1.0 * 0.41) / 3)
    assert urgent.score == pytest.approx((1 + 0.9 * 0.99) / 3)
    assert routine.score == pytest.approx(0.3 * 0.99 / 3)
    assert urgent.to_dict()["positives"] == ["Effusion", "Nodule"]


def test_threshold_is_inclusive_and_per_finding() -> None:
    thr = {**THR, "Pneumothorax": 0.7}
    assert score_urgency({"Pneumothorax": 0.7}, thr).level == "critical"
    assert score_urgency({"Pneumothorax": 0.69}, thr).level == "routine"


def test_without_thresholds_probabilities_only() -> None:
    u = score_urgency({"Pneumothorax": 0.55, "Effusion": 0.45}, None)
    assert (u.level, u.positives, u.basis) == ("critical", ("Pneumothorax",), "probabilities")
    mixed = score_urgency({"Pneumothorax": 0.55, "Effusion": 0.45}, {"Pneumothorax": None, "Effusion": 0.3})
    assert mixed.basis == "mixed" and mixed.positives == ("Effusion", "Pneumothorax")


def test_non_finding_keys_ignored_and_bad_values_refused() -> None:
    assert score_urgency({"abnormal": 0.99, "Mass": 0.9}, THR).top_finding == "Mass"
    with pytest.raises(EvaluationError, match="Mass"):
        score_urgency({"Mass": float("nan")}, THR)


def test_batch_matches_scalar() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((50, len(L.FINDINGS)))
    batch = score_urgency_batch(probs, L.FINDINGS, THR)
    for i in range(50):
        one = score_urgency(dict(zip(L.FINDINGS, probs[i], strict=True)), THR)
        assert batch.row(i) == one


def test_custom_weights_change_the_order(tmp_path: Path) -> None:
    path = tmp_path / "u.yaml"
    path.write_text("weights:\n  Nodule: 0.95\ncritical: [Nodule]\n")
    cfg = load_urgency_config(path)
    assert cfg.weights["Nodule"] == 0.95 and cfg.weights["Mass"] == L.URGENCY_WEIGHTS["Mass"]
    assert score_urgency({"Nodule": 0.9, "Pneumothorax": 0.9}, THR, config=cfg).top_finding == "Nodule"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("triage:\n  weights:\n    Pneumothorx: 1.0\n", "triage.weights.Pneumothorx"),
        ("triage:\n  weights:\n    Mass: -0.1\n", "triage.weights.Mass"),
        ("triage:\n  weights:\n    Mass: high\n", "triage.weights.Mass"),
        ("triage:\n  critical: [Fracture]\n", "triage.critical"),
        ("triage:\n  urgent_weight: 2\n", "triage.urgent_weight"),
        ("triage:\n  fallback_threshold: 0\n", "triage.fallback_threshold"),
        ("triage:\n  colour: red\n", "triage.colour"),
        ("triage: [1, 2]\n", "triage"),
        ("weights: {Mass: 0.1\n", "invalid YAML"),
    ],
)
def test_config_errors_name_the_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=field) as err:
        load_urgency_config(path)
    assert str(path) in str(err.value)


def test_missing_file_and_direct_construction_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_urgency_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"weights\.Mass"):
        UrgencyConfig(weights={"Mass": -1.0})


def test_finding_thresholds_from_a_thresholds_object() -> None:
    thr = Thresholds(methods={"youden": {"findings": {"Mass": 0.2, "Nodule": None},
                                         "findings:Pneumothorax": {"Pneumothorax": 0.3},
                                         "abnormal": {"abnormal": 0.5}},
                              "sensitivity": {"findings": {"Mass": 0.1}}})
    assert finding_thresholds(thr) == {"Mass": 0.2, "Nodule": None, "Pneumothorax": 0.3}
    assert finding_thresholds(thr, method="sensitivity") == {"Mass": 0.1}
    assert finding_thresholds(None) is None
