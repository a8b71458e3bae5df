"""The multitask ablation: variant planning, the comparison on known arrays, and one real tiny run on the phantom."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrmtl import labels
from cxrmtl.ablate.ablation import (
    CHECKPOINT_RULE,
    ArmScores,
    Harness,
    RunRecord,
    Table,
    check_split,
    compare,
    describe_table,
    plan_variants,
    seeded,
    summarise,
)
from cxrmtl.ablate.report import ablation_markdown, ablation_section, verdict
from cxrmtl.config import Config, from_dict
from cxrmtl.errors import ConfigError, EvaluationError, RunError


def _config(**tasks: object) -> Config:
    return from_dict(Config, {
        "seed": 5,
        "tasks": {"specs": tasks.get("specs", ["abnormal", "findings", "age", "sex", "view"])},
        "weighting": {"method": "equal"},
        "train": {"select_metric": "val/findings/auroc_mean"},
    })


def test_plan_variants_names_arms_and_specs() -> None:
    variants = plan_variants(_config(), findings=("Effusion", "Mass"), weightings=("equal", "pcgrad", "pcgrad"))
    assert [v.name for v in variants] == [
        "multitask", "findings_only", "single:Effusion", "single:Mass", "weighting:pcgrad"
    ]  # "equal" is the config's own method: that is the multitask run itself
    by_name = {v.name: v for v in variants}
    assert by_name["multitask"].config.tasks.specs == ("findings:Effusion,Mass", "abnormal", "age", "sex", "view")
    assert by_name["findings_only"].config.tasks.specs == ("findings:Effusion,Mass",)
    assert by_name["single:Mass"].config.tasks.specs == ("findings:Mass",)
    assert by_name["single:Mass"].arm == "single_task" and by_name["single:Mass"].dirname == "single-Mass"
    assert by_name["weighting:pcgrad"].config.weighting.method == "pcgrad"
    assert by_name["weighting:pcgrad"].config.tasks.specs[0] == "findings:Effusion,Mass"
    all14 = plan_variants(_config(), findings=None)
    assert all14[0].config.tasks.specs[0] == "findings" and len(all14) == 2 + labels.NUM_FINDINGS


def test_seeded_config_selects_on_findings_auroc_with_the_budget() -> None:
    variant = plan_variants(_config(), findings=("Mass",))[2]
    cfg = seeded(variant, seed=7, max_steps=11)
    assert (cfg.seed, cfg.train.max_steps, cfg.train.select_metric) == (7, 11, "auto")
    assert cfg.name == "ablation-single-Mass-seed7"
    assert seeded(variant, seed=7, max_steps=None).train.max_steps == variant.config.train.max_steps


def test_every_arm_trains_the_same_budget_and_is_scored_with_its_final_checkpoint() -> None:
    """One checkpoint rule for all arms: no single-task model gets a best-epoch pick for its own finding."""
    base = from_dict(Config, {"tasks": {"specs": ["findings", "age"]}, "train": {"early_stop_patience": 3}})
    configs = [seeded(v, seed=0, max_steps=5) for v in plan_variants(base, findings=("Mass", "Nodule"))]
    assert {(c.train.early_stop_patience, c.train.max_steps) for c in configs} == {(0, 5)}
    assert CHECKPOINT_RULE == "last"


def test_comparison_on_train_is_refused_and_on_val_loudly_labelled() -> None:
    with pytest.raises(ConfigError, match="in-sample"):
        check_split("train")
    check_split("val")
    check_split("test")
    result = {"phantom": False, "data_root": "x", "split": "val", "seeds": [0, 1], "max_steps": 3,
              "baseline_weighting": "equal", "checkpoint": "last", **summarise(_table(), n_resamples=50)}
    text = ablation_markdown(result)
    assert text.splitlines()[2].startswith("> **VALIDATION SPLIT") and "final checkpoint" in text
    assert "VALIDATION SPLIT" in ablation_section(result).html


@pytest.mark.parametrize(
    ("specs", "kwargs", "message"),
    [
        (["age", "sex"], {}, "no findings task"),
        (["findings"], {}, "no auxiliary task"),
        (["findings", "age"], {"weightings": ("sgd",)}, "weightings"),
        (["findings", "age"], {"findings": ("Infiltrate",)}, "unknown finding"),
    ],
)
def test_plan_variants_rejects_what_cannot_be_ablated(specs: list[str], kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_variants(_config(specs=specs), **kwargs)


def _record(arm: str, variant: str, seed: int, params: int) -> RunRecord:
    return RunRecord(variant=variant, arm=arm, seed=seed, run=f"runs/{variant}/seed{seed}", parameters=params,
                     train_seconds=10.0 + seed, infer_seconds=0.5, infer_images=100, steps=3, resumed=False)


def _table() -> Table:
    """Two findings, two seeds; 'strong' separates the classes, 'weak' is noise (known AUROCs via sklearn)."""
    rng = np.random.default_rng(1)
    n = 200
    y = rng.integers(0, 2, size=(n, 2)).astype(np.int8)
    pids = np.repeat(np.arange(n // 2), 2)
    strong = [y + rng.normal(0, 0.5, size=y.shape) for _ in range(2)]
    weak = [rng.normal(0, 1, size=y.shape) for _ in range(2)]
    arms = {
        "multitask": ArmScores("multitask", (0, 1), tuple(strong),
                               tuple(_record("multitask", "multitask", s, 1000) for s in (0, 1))),
        "findings_only": ArmScores("findings_only", (0, 1), tuple(weak),
                                   tuple(_record("findings_only", "findings_only", s, 900) for s in (0, 1))),
        "single_task": ArmScores("single_task", (0, 1), tuple(weak), tuple(
            _record("single_task", f"single:{f}", s, 800) for s in (0, 1) for f in ("Effusion", "Mass"))),
    }
    return Table(findings=("Effusion", "Mass"), rows=np.arange(n), patient_ids=pids, labels=y,
                 masks=np.ones(y.shape, bool), arms=arms)


def test_summarise_numbers_match_sklearn_and_costs_add_up() -> None:
    table = _table()
    summary = summarise(table, n_resamples=100)
    mt = summary["arms"]["multitask"]
    expected = [roc_auc_score(table.labels[:, 0], s[:, 0]) for s in table.arms["multitask"].scores]
    assert mt["auroc"]["Effusion"]["per_seed"] == pytest.approx(expected)
    assert mt["auroc"]["Effusion"]["mean"] == pytest.approx(np.mean(expected))
    assert mt["auroc"]["Effusion"]["sd"] == pytest.approx(np.std(expected, ddof=1))
    single = summary["arms"]["single_task"]
    assert single["models_per_seed"] == 2 and single["parameters"]["mean"] == 1600
    assert single["train_seconds"]["per_seed"] == [20.0, 22.0]
    assert single["infer_ms_per_image"]["mean"] == pytest.approx(10.0)
    assert [(c["group"], c["a"], c["b"]) for c in summary["comparisons"]] == [
        ("architecture", "multitask", "findings_only"), ("architecture", "multitask", "single_task")]
    diff = summary["comparisons"][0]["findings"][0]["diff"]
    other = summary["arms"]["findings_only"]["auroc"]["Effusion"]["mean"]
    assert diff == pytest.approx(mt["auroc"]["Effusion"]["mean"] - other)
    assert summary["comparisons"][0]["macro"]["low"] > 0  # strong vs noise: clearly better
    assert summary["images"] == 200 and summary["patients"] == 100
    json.dumps(summary, allow_nan=False)  # JSON-ready: no NaN sneaks through


def test_report_says_what_came_out_even_when_multitask_loses() -> None:
    table = _table()
    swapped = dict(table.arms)
    swapped["multitask"], swapped["findings_only"] = (
        ArmScores("multitask", (0, 1), table.arms["findings_only"].scores, table.arms["multitask"].records),
        ArmScores("findings_only", (0, 1), table.arms["multitask"].scores, table.arms["findings_only"].records),
    )
    losing = Table(table.findings, table.rows, table.patient_ids, table.labels, table.masks, swapped)
    result = {"phantom": True, "data_root": "x", "split": "test", "seeds": [0, 1], "max_steps": 3,
              "baseline_weighting": "equal", **summarise(losing, n_resamples=100)}
    text = ablation_markdown(result)
    assert "multitask (equal) vs findings only: macro Δ -" in text and "— worse." in text
    assert "| macro mean |" in text and "| single-task | 2 | 0.00 M |" in text
    section = ablation_section(result)
    assert section.title == "Multitask ablation" and "<table" in section.html
    assert section.note == "phantom data; split test" and "PHANTOM DATA" in section.html and "PHANTOM DATA" in text
    assert verdict({"diff": 0.01, "low": -0.02, "high": 0.04}) == "no clear difference"


def test_macro_row_says_when_it_averages_fewer_findings() -> None:
    table = _table()
    labels_ = table.labels.copy()
    labels_[:, 1] = 0  # Mass: no positives on this split, so its AUROC is undefined
    one_class = Table(table.findings, table.rows, table.patient_ids, labels_, table.masks, table.arms)
    result = {"phantom": False, "data_root": "x", "split": "test", "seeds": [0, 1], "max_steps": 3,
              "baseline_weighting": "equal", **summarise(one_class, n_resamples=50)}
    assert "| macro mean over 1 of 2 findings (1 undefined) |" in ablation_markdown(result)


def test_ablation_labels_its_data_from_the_folder_and_the_images_compared(tmp_path: Path) -> None:
    from trainkit import write_tiny_nih

    from cxrmtl.data.nih import load_index

    root = write_tiny_nih(tmp_path / "nih")
    cfg = Config()
    test_rows = load_index(root, val_fraction=cfg.data.val_fraction, split_seed=cfg.data.split_seed).rows("test")
    table = Table(("Effusion",), test_rows, np.zeros(test_rows.size), np.zeros((test_rows.size, 1)),
                  np.ones((test_rows.size, 1), bool), {})
    harness = Harness(data_root=root, out=tmp_path / "out")
    subset = describe_table(harness, cfg, table)
    assert subset.kind == "subset" and f"{test_rows.size} images" in subset.banner
    assert describe_table(harness, cfg, table, phantom=True).kind == "phantom"
    (root / "phantom.json").write_text("{}")  # as `cxrmtl phantom` writes it: detected without being told
    assert describe_table(harness, cfg, table).kind == "phantom"


def test_compare_needs_shared_seeds() -> None:
    table = _table()
    arms = dict(table.arms)
    arms["findings_only"] = ArmScores("findings_only", (5,), table.arms["findings_only"].scores[:1], ())
    other = Table(table.findings, table.rows, table.patient_ids, table.labels, table.masks, arms)
    with pytest.raises(EvaluationError, match="share no seed"):
        compare(other, "multitask", "findings_only", n_resamples=10)


TINY_CONFIG = """\
name: tiny
seed: 0
data: {image_size: 32, cache_workers: 1}
model: {backbone: resnet10t, channels_last: false}
tasks: {specs: [findings, abnormal, age, sex, view]}
optim: {lr: 3.0e-3}
augment: {enabled: false}
train: {epochs: 1, batch_size: 16, eval_batch_size: 64, checkpoint_every: 0, select_metric: val/findings/auroc_mean}
"""


@pytest.mark.slow
def test_ablate_command_end_to_end_and_resumable(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cxrmtl.cli import app

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    out = tmp_path / "abl"
    args = ["ablate", str(config), "--out", str(out), "--seeds", "2", "--max-steps", "2", "--findings",
            "Effusion,Pneumothorax", "--weightings", "uncertainty", "--phantom-patients", "40", "--bootstrap", "50",
            "--device", "cpu"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    result = json.loads((out / "ablation.json").read_text())
    assert set(result["arms"]) == {"multitask", "findings_only", "single_task", "weighting:uncertainty"}
    assert len(result["runs"]) == 10 and result["phantom"] is True and result["seeds"] == [0, 1]
    assert result["checkpoint"] == "last" and result["data"]["kind"] == "phantom"
    assert "PHANTOM DATA" in (out / "ablation.md").read_text()
    # The saved predictions are the final checkpoint's (the rule every arm follows), not best.pt's.
    from cxrmtl.data.cache import open_cache
    from cxrmtl.data.nih import load_index
    from cxrmtl.infer.predictor import Predictions, load_run, predict_split

    run_dir = out / "runs" / "single-Effusion" / "seed0"
    last = load_run(run_dir, which="last")
    index = load_index(out / "phantom", val_fraction=last.config.data.val_fraction,
                       split_seed=last.config.data.split_seed)
    fresh = predict_split(last, open_cache(out / "cache"), index, "test")
    saved = Predictions.load(run_dir / "ablation_predictions.npz")
    assert np.allclose(saved.outputs["findings:Effusion"], fresh.outputs["findings:Effusion"])
    assert result["arms"]["single_task"]["models_per_seed"] == 2
    assert result["arms"]["multitask"]["parameters"]["mean"] > result["arms"]["findings_only"]["parameters"]["mean"]
    assert {c["b"] for c in result["comparisons"]} == {"findings_only", "single_task", "multitask"}
    assert "## Per-finding AUROC" in (out / "ablation.md").read_text()
    assert json.loads((out / "ablation_section.json").read_text())["title"] == "Multitask ablation"

    # A second call trains nothing; a run whose record was lost is resumed from its checkpoint, not restarted.
    log = out / "runs" / "multitask" / "seed0" / "log.jsonl"
    before = log.read_text()
    (out / "runs" / "findings_only" / "seed1" / "ablation_run.json").unlink()
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert log.read_text() == before
    rerun = json.loads((out / "runs" / "findings_only" / "seed1" / "ablation_run.json").read_text())
    assert rerun["resumed"] is True and rerun["steps"] == 2

    # Other settings in the same folder must not silently reuse the finished runs.
    third = CliRunner().invoke(app, [*args[:-2], "--max-steps", "3", "--device", "cpu"])
    assert third.exit_code != 0 and isinstance(third.exception, RunError)
    assert "other settings" in str(third.exception)


def test_predictions_come_from_the_final_checkpoint_not_the_best(tmp_path: Path) -> None:
    """A run whose best.pt is an earlier step than last.pt: the ablation scores last.pt."""
    import shutil

    from trainkit import tiny_config, write_tiny_nih

    from cxrmtl.ablate.ablation import PREDICTIONS_FILE, _predict
    from cxrmtl.data.cache import build_cache, open_cache
    from cxrmtl.data.nih import load_index
    from cxrmtl.infer.predictor import Predictions, load_run, predict_split
    from cxrmtl.train.loop import train

    root, run = write_tiny_nih(tmp_path / "nih"), tmp_path / "out" / "run"
    harness = Harness(data_root=root, out=tmp_path / "out", device="cpu")
    cfg = tiny_config("train.epochs=1", "train.max_steps=1", "train.checkpoint_every=0")
    index = load_index(root, val_fraction=cfg.data.val_fraction, split_seed=cfg.data.split_seed)
    build_cache(index, harness.cache_dir, size=32, workers=1, progress=False)
    train(cfg, data_root=root, out=run, cache_dir=harness.cache_dir, device="cpu")
    early = tmp_path / "early.pt"
    shutil.copy(run / "checkpoints" / "last.pt", early)
    more = tiny_config("train.epochs=1", "train.max_steps=4", "train.checkpoint_every=0")
    train(more, data_root=root, out=run, cache_dir=harness.cache_dir, resume=True, device="cpu")
    shutil.copy(early, run / "checkpoints" / "best.pt")  # best = step 1, last = step 4
    assert (load_run(run, which="best").step, load_run(run, which="last").step) == (1, 4)
    _predict(harness, run)
    saved = Predictions.load(run / PREDICTIONS_FILE)
    view = open_cache(harness.cache_dir)
    last = predict_split(load_run(run, which="last"), view, index, "test")
    best = predict_split(load_run(run, which="best"), view, index, "test")
    assert np.allclose(saved.outputs["findings"], last.outputs["findings"])
    assert not np.allclose(saved.outputs["findings"], best.outputs["findings"])


# -- data efficiency: label cut, single-task models for the cut findings only ----------------------------------------


def test_plan_under_a_cut_trains_single_task_models_for_the_cut_findings_only(tmp_path: Path) -> None:
    from cxrmtl.ablate.ablation import AblationOptions, plan_ablation

    options = AblationOptions(data_root=tmp_path, out=tmp_path / "o", rare_fraction=0.1,
                              rare_findings=("Hernia", "Edema"), weightings=("pcgrad",))
    plan = plan_ablation(_config(), options)
    assert plan.cut == ("Hernia", "Edema") and plan.single == ("Edema", "Hernia")  # in FINDINGS order
    assert [v.name for v in plan.variants] == ["multitask", "findings_only", "single:Edema", "single:Hernia",
                                               "weighting:pcgrad"]  # FINDINGS order
    assert {(v.config.data.rare_positive_fraction, v.config.data.rare_findings) for v in plan.variants} == {
        (0.1, ("Hernia", "Edema"))}  # every variant trains on the same reduced labels
    everything = plan_ablation(_config(), dataclasses.replace(options, single="all"))
    assert len(everything.single) == labels.NUM_FINDINGS
    assert plan_ablation(_config(), dataclasses.replace(options, single="none")).single == ()
    full = plan_ablation(_config(), AblationOptions(data_root=tmp_path, out=tmp_path / "o"))
    assert full.cut == () and len(full.single) == labels.NUM_FINDINGS  # no cut: every single-task model
    assert full.base.data.rare_positive_fraction == 1.0


@pytest.mark.parametrize(("changes", "message"), [
    ({"single": "rare"}, "no label is cut"),
    ({"rare_fraction": 0.1, "findings": ("Effusion", "Mass")}, "rare_findings: Hernia, Pneumonia, Fibrosis, Edema "
                                                                "not among the compared findings"),
    ({"rare_fraction": 0.0}, "rare_positive_fraction: must be in"),
    ({"rare_fraction": 0.5, "rare_findings": ("Hernai",)}, "rare_findings: unknown finding"),
])
def test_plan_refuses_impossible_options(tmp_path: Path, changes: dict, message: str) -> None:
    from cxrmtl.ablate.ablation import AblationOptions, plan_ablation

    with pytest.raises(ConfigError, match=message):
        plan_ablation(_config(), AblationOptions(data_root=tmp_path, out=tmp_path / "o", **changes))


def _cut_table() -> Table:
    """The two-finding table with Mass cut and a single-task arm that has a model for Mass only."""
    table = _table()
    single = table.arms["single_task"]
    partial = [s.copy() for s in single.scores]
    for s in partial:
        s[:, 0] = np.nan  # no Effusion model
    arms = {**table.arms, "single_task": ArmScores("single_task", single.seeds, tuple(partial), tuple(
        _record("single_task", "single:Mass", s, 800) for s in (0, 1)), covered=("Mass",))}
    return Table(table.findings, table.rows, table.patient_ids, table.labels, table.masks, arms,
                 cut_findings=("Mass",))


def test_partial_single_task_arm_is_compared_on_its_findings_only() -> None:
    table = _cut_table()
    summary = summarise(table, n_resamples=60)
    single = summary["arms"]["single_task"]
    assert single["covered"] == ["Mass"] and single["macro_auroc"]["mean"] is None
    assert single["macro_auroc_cut"]["mean"] == pytest.approx(single["auroc"]["Mass"]["mean"])
    assert single["auroc"]["Effusion"]["mean"] is None and single["models_per_seed"] == 1
    comp = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    vs_single = comp[("multitask", "single_task")]
    assert [r["compared"] for r in vs_single["findings"]] == [False, True]
    assert vs_single["macro"]["over"] == ["Mass"] and vs_single["macro_cut"]["over"] == ["Mass"]
    assert vs_single["macro_cut"]["diff"] == pytest.approx(vs_single["findings"][1]["diff"])
    vs_fo = comp[("multitask", "findings_only")]
    assert vs_fo["macro"]["over"] == ["Effusion", "Mass"] and vs_fo["macro_cut"]["over"] == ["Mass"]
    direct = compare(table, "multitask", "findings_only", n_resamples=60)
    assert vs_fo["findings"][1]["diff"] == pytest.approx(direct.diff[1])
    json.dumps(summary, allow_nan=False)


def test_report_of_a_cut_marks_what_was_not_trained_and_adds_the_cut_rows() -> None:
    summary = summarise(_cut_table(), n_resamples=60)
    label_cut = {"fraction": 0.25, "findings": ["Mass"], "unit": "image", "masked_not_negative": True,
                 "split": "train", "per_finding": {"Mass": {"positives": 40, "kept": [10, 10]}}}
    curves = {"multitask": {"steps": [5, 10, 15], "values": [0.6, 0.7, 0.7], "verdict": "plateaued",
                            "gain_last_third": 0.0, "cut": {"values": [0.5, 0.6, 0.7], "verdict": "still rising",
                                                            "gain_last_third": 0.1}}}
    result = {"phantom": True, "data_root": "x", "split": "test", "seeds": [0, 1], "max_steps": None,
              "baseline_weighting": "equal", "checkpoint": "last", "label_cut": label_cut,
              "single": {"findings": ["Mass"], "all": False}, "curves": curves, **summary}
    text = ablation_markdown(result)
    assert "| Mass (cut) |" in text and "| Effusion | " in text
    effusion = next(line for line in text.splitlines() if line.startswith("| Effusion |"))
    assert effusion.count("—") == 2  # single-task AUROC and its Δ: no Effusion model
    assert "| macro mean, cut findings (1) |" in text
    assert "multitask (equal) vs single-task, cut findings: macro Δ" in text
    assert "multitask (equal) vs single-task: macro Δ" not in text  # its macro is over Mass only: not a 2-finding mean
    assert "Reduced training labels" in text and "0.25 of the training split's positive labels of Mass" in text
    assert "| Mass | 40 | 10, 10 | 0.25 |" in text
    assert "| multitask (equal) | 3 | 0.600 0.700 0.700 | +0.000 | plateaued |" in text
    assert "| multitask (equal), cut findings | 3 | 0.500 0.600 0.700 | +0.100 | still rising |" in text
    assert "Single-task models were trained only for Mass" in text


@pytest.mark.parametrize(("args", "message"), [
    (["--rare-fraction", "0"], "'--rare-fraction': 0 is not in (0, 1]"),
    (["--rare-fraction", "1.5"], "'--rare-fraction': 1.5 is not in (0, 1]"),
    (["--rare-fraction", "0.1", "--rare-findings", "Hernia,Hernai"], "'--rare-findings': unknown finding(s) 'Hernai'"),
    (["--rare-fraction", "0.1", "--rare-findings", "Hernia,Hernia"], "names a finding twice"),
    (["--rare-findings", "Hernia"], "'--rare-findings': cuts nothing without --rare-fraction below 1"),
    (["--single", "rare"], "single: 'rare' trains single-task models for the findings whose labels are cut"),
    (["--single", "some"], "'--single'"),
    (["--rare-fraction", "0.1", "--findings", "Effusion,Mass"], "rare_findings: Hernia, Pneumonia, Fibrosis, Edema"),
    (["--shard", "3/2"], "'--shard': '3/2' is not K/N"),
])
def test_ablate_command_rejects_bad_data_efficiency_options(tmp_path: Path, args: list[str], message: str) -> None:
    """Through the real entry point: one line on stderr, exit status 2, nothing written (no phantom)."""
    from trainkit import run_cli

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    out = tmp_path / "abl"
    done = run_cli(["ablate", str(config), "--out", str(out), "--device", "cpu", *args], timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert not (out / "phantom").exists()


@pytest.mark.slow
def test_ablate_with_a_label_cut_end_to_end(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cxrmtl.cli import app
    from cxrmtl.infer.predictor import Predictions

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    out, cache = tmp_path / "abl", tmp_path / "shared_cache"
    args = ["ablate", str(config), "--out", str(out), "--seeds", "1", "--max-steps", "2", "--findings",
            "Effusion,Pneumothorax,Hernia", "--rare-fraction", "0.25", "--rare-findings", "Hernia,Pneumothorax",
            "--phantom-patients", "40", "--bootstrap", "30", "--device", "cpu", "--cache", str(cache)]
    for shard in ("1/2", "2/2"):  # two processes could run these at once; each trains its half, compares nothing
        part = CliRunner().invoke(app, [*args, "--shard", shard])
        assert part.exit_code == 0 and f"shard {shard} done" in part.output, part.output
        assert not (out / "ablation.json").exists()
    assert len(list(out.glob("runs/*/seed*/ablation_run.json"))) == 4  # the two shards made every run
    logs = {p: p.read_text() for p in out.glob("runs/*/seed*/log.jsonl")}
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert all(p.read_text() == text for p, text in logs.items())  # the unsharded call only compared
    result = json.loads((out / "ablation.json").read_text())
    assert result["schema"] == 3 and result["cut_findings"] == ["Hernia", "Pneumothorax"]
    assert sorted(r["variant"] for r in result["runs"]) == [
        "findings_only", "multitask", "single:Hernia", "single:Pneumothorax"]  # --single rare by default
    assert (cache / "manifest.json").is_file() and not (out / "cache").exists()  # the shared cache was used
    for record in result["runs"]:
        cut = json.loads((out / record["run"] / "label_cut.json").read_text())
        assert set(cut["findings"]) == {"Hernia", "Pneumothorax"} and cut["fraction"] == 0.25
        for finding, entry in cut["findings"].items():
            kept = result["label_cut"]["per_finding"][finding]
            assert entry["kept"] == kept["kept"][0] == max(1, int(0.25 * entry["positives"] + 0.5))
        preds = Predictions.load(out / record["run"] / "ablation_predictions.npz")
        assert all(m.all() for m in preds.masks.values() if m.dtype == bool and m.ndim == 2)  # test: every label
    assert result["single"] == {"findings": ["Pneumothorax", "Hernia"], "all": False}
    assert result["arms"]["single_task"]["covered"] == ["Pneumothorax", "Hernia"]
    assert set(result["curves"]) == {"multitask", "findings_only", "single_task"}
    assert result["curves"]["multitask"]["verdict"] == "too few evaluations"  # 2 steps: one partial epoch
    text = (out / "ablation.md").read_text()
    assert "Reduced training labels" in text and "| macro mean, cut findings (2) |" in text
    assert "Validation curves (budget check)" in text


def test_static_task_weights_follow_the_tasks_of_each_variant() -> None:
    """The demo recipe weights its auxiliary tasks 0.1: variants without them drop those weights (the engine would
    refuse a weight for a task it does not have), and the weighting arms run their method as defined."""
    base = from_dict(Config, {"tasks": {"specs": ["findings", "abnormal", "age"]},
                              "weighting": {"method": "equal", "weights": {"findings": 2.0, "abnormal": 0.1,
                                                                           "age": 0.1}}})
    by_name = {v.name: v.config for v in plan_variants(base, findings=("Effusion", "Mass"),
                                                        weightings=labels.ABLATION_WEIGHTINGS)}
    assert by_name["multitask"].weighting.weights == {"findings:Effusion,Mass": 2.0, "abnormal": 0.1, "age": 0.1}
    assert by_name["findings_only"].weighting.weights == {"findings:Effusion,Mass": 2.0}
    assert by_name["single:Mass"].weighting.weights == {"findings:Mass": 2.0}
    assert by_name["weighting:pcgrad"].weighting.weights == {} and "weighting:equal" in by_name  # unit weights
    from cxrmtl.train.weighting import build_weighting

    for cfg in by_name.values():  # every variant's weighting is one the engine builds for its tasks
        w = cfg.weighting
        build_weighting(w.method, task_names=list(cfg.tasks.specs), **w.kwargs,
                        **({"weights": w.weights} if w.weights else {}))


def test_report_names_the_static_weights_of_the_multitask_arm() -> None:
    result = {"phantom": False, "data_root": "x", "split": "test", "seeds": [0, 1], "max_steps": None,
              "baseline_weighting": "equal", "baseline_weights": {"abnormal": 0.1, "age": 0.1},
              **summarise(_table(), n_resamples=30)}
    text = ablation_markdown(result)
    assert "| multitask (equal*) | 1 |" in text  # the cost row
    assert "*Static task weights of the config: abnormal 0.1, age 0.1 (other tasks 1)" in text
