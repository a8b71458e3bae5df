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
    threshold_scale,
    triage_thresholds,
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


def test_no_positive_finding_is_routine() -> None:
    u = score_urgency(dict.fromkeys(L.FINDINGS, 0.1), THR)
    assert (u.level, u.top_finding, u.positives, u.basis) == ("routine", None, (), "thresholds")
    # Still ordered by how close the most urgent finding came: pneumothorax 0.1 of a 0.4 threshold -> q = 0.125.
    assert u.score == pytest.approx(0.125)
    assert score_urgency(dict.fromkeys(L.FINDINGS, 0.0), THR).score == 0.0


def test_levels_and_scores() -> None:
    base = dict.fromkeys(L.FINDINGS, 0.0)
    crit = score_urgency({**base, "Pneumothorax": 0.7}, THR)
    urgent = score_urgency({**base, "Effusion": 0.99, "Nodule": 0.9}, THR)
    routine = score_urgency({**base, "Nodule": 0.99}, THR)
    near_miss = score_urgency({**base, "Pneumothorax": 0.39}, THR)
    assert (crit.level, crit.top_finding) == ("critical", "Pneumothorax")
    assert (urgent.level, urgent.top_finding, urgent.positives) == ("urgent", "Effusion", ("Effusion", "Nodule"))
    assert (routine.level, routine.top_finding) == ("routine", "Nodule")
    assert (near_miss.level, near_miss.positives) == ("routine", ())
    # score = max_f w_f q_f, q = threshold at 1/2: above it 1/2 + (p - t) / (2 (1 - t)), below it p / (2 t).
    assert crit.score == pytest.approx(1.0 * (0.5 + 0.3 / 1.2))
    assert urgent.score == pytest.approx(0.9 * (0.5 + 0.59 / 1.2))
    assert routine.score == pytest.approx(0.3 * (0.5 + 0.59 / 1.2))
    assert near_miss.score == pytest.approx(0.39 / 0.8)
    # A positive pneumothorax scores at least 1/2; a near miss just below; weak urgent calls below both.
    weak_urgent = score_urgency({**base, "Pneumonia": 0.41}, THR)
    assert crit.score > near_miss.score > weak_urgent.score >= 0.25
    assert urgent.to_dict()["positives"] == ["Effusion", "Nodule"]


def test_score_is_monotone_in_each_probability() -> None:
    rng = np.random.default_rng(1)
    probs = rng.random((200, len(L.FINDINGS)))
    base = score_urgency_batch(probs, L.FINDINGS, THR).score
    for k in range(len(L.FINDINGS)):
        up = probs.copy()
        up[:, k] = np.minimum(1.0, up[:, k] + 0.1)
        assert np.all(score_urgency_batch(up, L.FINDINGS, THR).score >= base - 1e-12)
    assert np.all((base >= 0) & (base <= 1))


def test_threshold_is_inclusive_and_per_finding() -> None:
    thr = {**THR, "Pneumothorax": 0.7}
    assert score_urgency({"Pneumothorax": 0.7}, thr).level == "critical"
    assert score_urgency({"Pneumothorax": 0.69}, thr).level == "routine"


def test_without_thresholds_probabilities_only() -> None:
    u = score_urgency({"Pneumothorax": 0.55, "Effusion": 0.45}, None)
    assert (u.level, u.positives, u.basis) == ("critical", ("Pneumothorax",), "probabilities")
    assert u.score == pytest.approx(0.55)  # fallback threshold 0.5: q = p
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
        ("triage:\n  threshold_method: roc\n", "triage.threshold_method"),
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


def test_threshold_scale_edges_and_positive_override() -> None:
    p = np.array([[0.0, 1.0, 1.0, 0.3]])
    q = threshold_scale(p, np.array([0.0, 1.0, 0.9999999, 0.3]))
    assert np.all(np.isfinite(q)) and q[0, 0] == 0.5 and q[0, 1] == 0.5 and q[0, 3] == 0.5
    # Calls made elsewhere at the thresholds win over the comparison (e.g. predictions.csv's _positive columns).
    probs = np.array([[0.6, 0.2]])
    forced = score_urgency_batch(probs, ("Pneumothorax", "Mass"), None, positive=np.array([[False, True]]))
    assert forced.row(0).positives == ("Mass",) and forced.row(0).level == "urgent"
    assert forced.score[0] == pytest.approx(max(1.0 * (0.5 - 1e-12), 0.55 * 0.5))
    with pytest.raises(EvaluationError, match="positive"):
        score_urgency_batch(probs, ("Pneumothorax", "Mass"), None, positive=np.zeros((2, 2), bool))


def test_triage_thresholds_use_the_configured_operating_point() -> None:
    thr = Thresholds(methods={"youden": {"findings": {"Mass": 0.2}}, "sensitivity": {"findings": {"Mass": 0.05}}})
    assert triage_thresholds(thr) == {"Mass": 0.05}  # default: the 90 %-sensitivity point
    assert triage_thresholds(thr, UrgencyConfig(threshold_method="youden")) == {"Mass": 0.2}
    only = Thresholds(methods={"youden": {"findings": {"Mass": 0.2}}})
    assert triage_thresholds(only) == {"Mass": 0.2}  # not recorded: the run's default method
    assert triage_thresholds(None) is None


def test_finding_thresholds_from_a_thresholds_object() -> None:
    thr = Thresholds(methods={"youden": {"findings": {"Mass": 0.2, "Nodule": None},
                                         "findings:Pneumothorax": {"Pneumothorax": 0.3},
                                         "abnormal": {"abnormal": 0.5}},
                              "sensitivity": {"findings": {"Mass": 0.1}}})
    assert finding_thresholds(thr) == {"Mass": 0.2, "Nodule": None, "Pneumothorax": 0.3}
    assert finding_thresholds(thr, method="sensitivity") == {"Mass": 0.1}
    assert finding_thresholds(None) is None


def test_score_result_uses_the_worklists_operating_point_on_the_results_scale() -> None:
    """predict and serve rank by the rule the simulation measured: the sensitivity point, temperature-mapped."""
    from cxrmtl.runs.operating import Thresholds, apply_temperature
    from cxrmtl.triage.urgency import score_result

    operating = Thresholds(
        methods={"youden": {"findings": {"Pneumothorax": 0.6}}, "sensitivity": {"findings": {"Pneumothorax": 0.2}}},
        temperatures={"findings": {"Pneumothorax": 2.0}},
    )
    raw = 0.3  # above the sensitivity point (0.2), below Youden's (0.6)
    calibrated = float(apply_temperature(np.array([raw]), 2.0)[0])
    result = {"findings": {"Pneumothorax": {"probability": calibrated, "threshold": 0.6, "positive": False}},
              "calibrated": True}
    urgency = score_result(result, operating)
    assert urgency.level == "critical" and urgency.positives == ("Pneumothorax",)
    # The same study on the uncalibrated scale gets the same urgency: calibration changes nothing in the worklist.
    same = score_result({"findings": {"Pneumothorax": {"probability": raw}}, "calibrated": False}, operating)
    assert same.level == urgency.level and same.score == pytest.approx(urgency.score)
    # Without an operating file: probabilities only, never invented thresholds.
    assert score_result(result, None).basis == "probabilities"
