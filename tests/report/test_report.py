"""report.render + report.figures + eval.evaluate on arrays: metrics document, Section API, Markdown and HTML output."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from eval_synth import make_split
from sklearn.metrics import roc_auc_score

from cxrmtl import labels as L
from cxrmtl.errors import EvaluationError
from cxrmtl.eval.evaluate import EvalOptions, Evaluation, evaluate_outputs
from cxrmtl.eval.published import WANG2017
from cxrmtl.report import figures as F
from cxrmtl.report.evaluation import make_figures
from cxrmtl.report.render import (
    Figure,
    ReportData,
    Section,
    banners,
    build_sections,
    html_table,
    load_section,
    markdown_table,
    mean_label,
    render_report,
    table_section,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluation() -> tuple[object, Evaluation]:
    ev, val = make_split("test", seed=1), make_split("val", seed=2, first_patient=10_000)
    info = {"run": "runs/x", "data": {"kind": "phantom", "root": "/data"}, "code_version": "t", "created": "now"}
    return ev, evaluate_outputs(ev, val=val, options=EvalOptions(n_bootstrap=60), info=info)


def test_metrics_document(evaluation: tuple[object, Evaluation]) -> None:
    ev, result = evaluation
    m = result.metrics
    json.dumps(m, allow_nan=False)  # strict JSON: undefined values are null, never NaN
    assert m["schema"] == 1 and m["split"] == "test" and m["thresholds_from"] == "val"
    assert m["n_images"] == len(ev.images) and m["bootstrap"]["n_resamples"] == 60
    eff = m["tasks"]["findings"]["outputs"]["Effusion"]
    k = L.FINDING_INDEX["Effusion"]
    assert eff["auroc"]["value"] == pytest.approx(roc_auc_score(ev.tasks["findings"].targets[:, k],
                                                                ev.tasks["findings"].scores[:, k]))
    assert eff["auroc"]["low"] <= eff["auroc"]["value"] <= eff["auroc"]["high"]
    assert set(eff["operating_points"]) == {"youden", "sensitivity"}
    assert eff["calibration"]["temperature"] is not None
    hernia = m["tasks"]["findings"]["outputs"]["Hernia"]
    assert hernia["auroc"]["value"] is None and hernia["n_pos"] == 0
    assert m["findings"]["auroc_mean"]["n_outputs"] == 13
    assert m["tasks"]["age"]["outputs"]["age"]["mae"]["value"] > 0
    assert {r["attribute"] for r in m["findings"]["subgroups"]} == {"sex", "age", "view"}
    assert result.thresholds is not None and result.thresholds.get("abnormal", "abnormal") is not None


def test_tables_escape_content() -> None:
    md = markdown_table(["a", "b"], [["x|y", None], [0.12345, 3]])
    assert "x\\|y" in md and "n/a" in md and "0.123" in md
    h = html_table(["<b>"], [["<script>alert(1)</script>"]])
    assert "<script>" not in h and "&lt;script&gt;" in h


def test_section_json_round_trip(tmp_path: Path) -> None:
    fig = Figure(caption="c", png=PNG_MAGIC + b"x", name="n")
    section = table_section("Localization", ["finding", "acc"], [["Mass", 0.3]], note="n", figures=[fig])
    path = tmp_path / "section.json"
    path.write_text(json.dumps(section.to_json()))
    assert load_section(path) == section
    path.write_text(json.dumps({"markdown": "no title"}))
    with pytest.raises(EvaluationError, match=r"section\.json"):
        load_section(path)
    path.write_text("[1, 2]")
    with pytest.raises(EvaluationError, match="one JSON object"):
        load_section(path)


def test_banners() -> None:
    assert banners({"data": {"kind": "nih"}, "split": "test"}) == []
    assert banners({"data": {"kind": "phantom"}, "split": "test"})[0][1].startswith("PHANTOM DATA")
    texts = [t for _, t in banners({"data": {"kind": "subset"}, "split": "val", "n_images": 5})]
    assert any(t.startswith("SUBSET: 5 images") for t in texts) and any("val split" in t for t in texts)
    described = {"kind": "subset", "banner": "SUBSET: 9 images, 4 patients of the official test split, ...",
                 "comparable": False}
    assert banners({"data": described, "split": "test"}) == [("warn", described["banner"])]


def _published(metrics: dict) -> Section:
    return next(s for s in build_sections(ReportData(metrics=metrics)) if "ublished" in s.title)


def test_ours_sits_next_to_published_numbers_only_on_the_official_test_split(
    evaluation: tuple[object, Evaluation],
) -> None:
    metrics = dict(evaluation[1].metrics)  # phantom data: the papers' numbers for reference, ours not among them
    reference = _published(metrics)
    assert reference.title == "Published results (reference only)" and "ours" not in reference.markdown
    assert "not comparable" in reference.note and "Sources: Wang et al." in reference.markdown
    metrics["data"] = {"kind": "nih", "label": "NIH ChestX-ray14, official test split", "comparable": True}
    table = _published(metrics)
    assert table.title == "Comparison with published results"
    assert "| ours (NIH ChestX-ray14, official test split) |" in table.markdown
    # 14 findings in the run, Hernia undefined (no positives): the mean row says it averages 13, and the papers'
    # mean over the same 13 stands beside it.
    assert "| mean over 13 of 14 findings (1 undefined) |" in table.markdown
    same = next(line for line in table.markdown.splitlines() if "same 13 findings" in line)
    wang13 = np.mean([v for f, v in WANG2017.by_finding().items() if f != "Hernia"])
    assert f"{wang13:.3f}" in same


def test_mean_label_counts_undefined_and_missing_findings() -> None:
    names = L.FINDINGS[:4]
    assert mean_label({"n_outputs": 14}, L.FINDINGS) == "mean over 14 findings"
    assert mean_label({"n_outputs": 3}, names) == "mean over 3 of 14 findings (1 undefined, 10 not predicted)"
    assert mean_label({"n_outputs": 4}, names) == "mean over 4 of 14 findings (10 not predicted)"


def test_training_curves_skip_broken_lines(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"event": "step", "step": i, "loss/findings": 1 / (i + 1)}) for i in range(5)]
    lines += ['{"event": "step", "st', json.dumps({"event": "epoch", "epoch": 0, "val/findings/auroc_mean": 0.7})]
    log.write_text("\n".join(lines) + "\n")
    records = F.read_log(log)
    assert len(records) == 6
    fig = F.training_curves(records)
    assert fig is not None and fig.png.startswith(PNG_MAGIC)
    assert F.training_curves([{"event": "step", "step": 1}]) is None


def test_render_report(tmp_path: Path) -> None:
    # Four findings keep the figure grids (the slow part, matplotlib) small.
    ev, val = make_split("test", seed=1, findings=4), make_split("val", seed=2, first_patient=10_000, findings=4)
    info = {"run": "runs/x", "data": {"kind": "phantom", "root": "/data"}, "code_version": "t", "created": "now"}
    result = evaluate_outputs(ev, val=val, options=EvalOptions(n_bootstrap=30), info=info)
    figs = make_figures(ev, result, log_path=None, n_bins=10)
    assert [f.name for f in figs] == ["roc_findings", "pr_findings", "reliability_findings", "roc_auxiliary"]
    extra = Section(title="Ablation", markdown="| a |\n|---|\n| 1 |\n", html="<p>ablation table</p>")
    paths = render_report(ReportData(metrics=result.metrics, figures=tuple(figs)), out_dir=tmp_path,
                          sections=[extra])
    page = paths.html.read_text()
    md = paths.markdown.read_text()
    assert "PHANTOM DATA: not comparable to published numbers" in page and "PHANTOM DATA" in md
    assert "ablation table" in page and "## Ablation" in md
    assert "Wang 2017 ResNet-50 (official split)" in page and "CheXNet 2017 DenseNet-121 (random split)" in page
    assert "Published results (reference only)" in md and "| ours" not in md  # phantom: never beside papers
    # Self-contained: every image is an inline PNG, nothing is fetched (no http(s) URL in src/href).
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(figs)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert not re.search(r'(src|href)="https?:', page)
    for ref in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (tmp_path / ref).read_bytes().startswith(PNG_MAGIC)
    assert not list(tmp_path.rglob(".*tmp*"))


def test_render_report_rejects_non_sections(tmp_path: Path, evaluation: tuple[object, Evaluation]) -> None:
    with pytest.raises(EvaluationError, match="Section"):
        render_report(ReportData(metrics=evaluation[1].metrics), out_dir=tmp_path, sections=["not a section"])


def test_evaluate_without_val_has_no_thresholds() -> None:
    ev = make_split("test", patients=40, seed=3)
    result = evaluate_outputs(ev, options=EvalOptions(n_bootstrap=20))
    assert result.thresholds is None and result.metrics["thresholds_from"] is None
    assert result.metrics["tasks"]["findings"]["outputs"]["Mass"]["operating_points"] == {}
    assert np.isfinite(result.metrics["findings"]["auroc_mean"]["value"])


def test_masked_labels_are_ignored_even_if_nan() -> None:
    from dataclasses import replace

    ev = make_split("test", patients=60, seed=4, findings=2)
    sex = ev.tasks["sex"]
    mask = sex.mask.copy()
    mask[::3] = False
    targets = np.where(mask, sex.targets, np.nan)
    tasks = {**ev.tasks, "sex": replace(sex, targets=targets, mask=mask)}
    result = evaluate_outputs(replace(ev, tasks=tasks), options=EvalOptions(n_bootstrap=20))
    out = result.metrics["tasks"]["sex"]["outputs"]["sex"]
    keep = mask[:, 0]
    assert out["n"] == keep.sum()
    assert out["auroc"]["value"] == pytest.approx(roc_auc_score(sex.targets[keep, 0], sex.scores[keep, 0]))


def test_task_outputs_validate_shapes() -> None:
    from cxrmtl.eval.evaluate import TaskOutputs

    with pytest.raises(EvaluationError, match="scores"):
        TaskOutputs("t", "binary", ("a",), np.zeros((3, 2)), np.zeros((3, 1)), np.ones((3, 1), bool))
    with pytest.raises(EvaluationError, match="kind"):
        TaskOutputs("t", "ranking", ("a",), np.zeros((3, 1)), np.zeros((3, 1)), np.ones((3, 1), bool))
    with pytest.raises(EvaluationError, match="NaN"):
        TaskOutputs("t", "binary", ("a",), np.full((3, 1), np.nan), np.zeros((3, 1)), np.ones((3, 1), bool))
