"""ablate/curves.py: per-arm validation curves from the runs' logs and the plateau verdict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from cxrmtl.ablate.curves import arm_curves, plateau_verdict, run_curve
from cxrmtl.runs.layout import RunDir


@pytest.mark.parametrize(("values", "verdict", "gain"), [
    ([0.50, 0.60, 0.70, 0.80, 0.85, 0.90], "still rising", 0.10),  # last third [0.85, 0.90] vs best before 0.80
    ([0.50, 0.70, 0.80, 0.801, 0.803, 0.802], "plateaued", 0.002),
    ([0.50, 0.80, 0.79, 0.70, 0.70, 0.70], "plateaued", -0.10),  # peaked early: overfitting is not "rising"
    ([0.60, 0.70, 0.71], "still rising", 0.01),  # 3 evaluations: the last one against the first two
])
def test_plateau_verdict(values: list[float], verdict: str, gain: float) -> None:
    out = plateau_verdict(values)
    assert out["verdict"] == verdict and out["gain_last_third"] == pytest.approx(gain)
    assert out["final"] == values[-1] and out["best"] == max(values) and out["best_at"] == values.index(max(values))


def test_plateau_verdict_needs_three_defined_evaluations() -> None:
    assert plateau_verdict([0.5, 0.6])["verdict"] == "too few evaluations"
    assert plateau_verdict([0.5, float("nan"), 0.6, 0.7])["verdict"] == "undefined evaluations"


@dataclass(frozen=True)
class Rec:
    arm: str
    seed: int
    run: str


def _log(out: Path, run: str, task: str, points: dict[int, dict[str, float | None]]) -> None:
    """Epoch records as the training loop writes them (RunDir.log), plus a step record the curves must ignore."""
    rd = RunDir(out / run)
    rd.path.mkdir(parents=True)
    rd.log({"event": "step", "step": 1, "val/findings/auroc/Mass": 0.0})
    for step, values in points.items():
        rd.log({"event": "epoch", "epoch": step // 10, "step": step, f"val/{task}/auroc_mean": 0.0,
                **{f"val/{task}/auroc/{f}": (float("nan") if v is None else v) for f, v in values.items()},
                **{f"val/{task}/ap/{f}": 0.0 for f in values}})


def test_arm_curves_average_findings_then_seeds(tmp_path: Path) -> None:
    _log(tmp_path, "mt0", "findings", {10: {"Mass": 0.6, "Hernia": 0.4}, 20: {"Mass": 0.8, "Hernia": 0.6},
                                       30: {"Mass": 0.8, "Hernia": 0.6}})
    _log(tmp_path, "mt1", "findings", {10: {"Mass": 0.7, "Hernia": 0.5}, 20: {"Mass": 0.9, "Hernia": None},
                                       30: {"Mass": 0.9, "Hernia": 0.7}})
    for seed in (0, 1):  # single-task: each model's own finding, merged per seed
        _log(tmp_path, f"sm{seed}", "findings:Mass", {10: {"Mass": 0.5}, 20: {"Mass": 0.6}, 30: {"Mass": 0.7}})
        _log(tmp_path, f"sh{seed}", "findings:Hernia", {10: {"Hernia": 0.3}, 20: {"Hernia": 0.4}, 30: {"Hernia": 0.5}})
    records = [Rec("multitask", 0, "mt0"), Rec("multitask", 1, "mt1"),
               *(Rec("single_task", s, f"{k}{s}") for s in (0, 1) for k in ("sm", "sh"))]
    curves = arm_curves(tmp_path, records, cut_findings=("Hernia",))
    mt = curves["multitask"]
    assert mt["steps"] == [10, 20, 30]
    # seed 0: 0.5, 0.7, 0.7; seed 1: 0.6, 0.9 (Hernia undefined: left out), 0.8
    assert mt["values"] == pytest.approx([0.55, 0.8, 0.75])
    # over the cut finding alone, step 20 has no value for seed 1: undefined for the arm (not a mean of one seed)
    assert mt["cut"]["values"][0] == pytest.approx(0.45) and mt["cut"]["values"][1] is None
    assert mt["cut"]["verdict"] == "undefined evaluations"
    assert curves["single_task"]["values"] == pytest.approx([0.4, 0.5, 0.6])
    assert curves["single_task"]["verdict"] == "still rising" and mt["verdict"] == "plateaued"
    assert run_curve(tmp_path / "missing" / "log.jsonl") == {}
