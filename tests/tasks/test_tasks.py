"""Tasks: registry, target selection, masks, losses, predictions, metrics and pos_weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrmtl.errors import ConfigError
from cxrmtl.labels import FINDING_INDEX, FINDINGS, TARGET_NAMES
from cxrmtl.tasks import TASK_KINDS, TASKS, build_tasks, compute_pos_weight, compute_pos_weights

B = 12


def _batch(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A batch shaped like data/loader.py's: findings (B, 14), the others (B,); some labels missing."""
    g = torch.Generator().manual_seed(seed)
    findings = (torch.rand(B, 14, generator=g) > 0.93).float()
    findings[0], findings[1] = 1.0, 0.0  # every finding column and "abnormal" has both classes
    targets = {
        "findings": findings,
        "abnormal": findings.amax(1),
        "age": torch.randint(1, 95, (B,), generator=g).float(),
        "sex": torch.randint(0, 2, (B,), generator=g).float(),
        "view": torch.randint(0, 2, (B,), generator=g).float(),
    }
    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in targets.items()}
    masks["sex"][:3] = False
    targets["sex"][:3] = -1.0  # the loader's value for a missing code must not matter
    masks["age"][5] = False
    targets["age"][5] = float("nan")
    return targets, masks


def _all_specs() -> list[str]:
    return [*sorted(TASKS), "findings:Pneumothorax", "findings:Effusion,Hernia"]


@pytest.mark.parametrize("spec", _all_specs())
def test_every_task_selects_scores_and_predicts(spec: str) -> None:
    (task,) = build_tasks([spec])
    targets, masks = _batch()
    target, mask = task.select(targets, masks)
    assert target.shape == mask.shape == (B, task.out_dim)
    assert target.dtype == torch.float32 and mask.dtype == torch.bool
    assert task.out_dim == len(task.output_names) and task.kind == TASK_KINDS[spec.partition(":")[0]]
    output = torch.randn(B, task.out_dim, requires_grad=True)
    loss = task.loss(output, target, mask)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(output.grad).all()
    pred = task.predict(output.detach())
    assert pred.shape == (B, task.out_dim)
    metrics = task.metrics(pred.numpy(), target.numpy(), mask.numpy())
    assert task.primary_metric in metrics and np.isfinite(metrics[task.primary_metric])
    assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("spec", _all_specs())
def test_empty_mask_gives_zero_loss_with_graph(spec: str) -> None:
    (task,) = build_tasks([spec], pos_weight={"findings": np.full(14, 3.0, np.float32)})
    output = torch.randn(B, task.out_dim, requires_grad=True)
    target = torch.full((B, task.out_dim), float("nan"))
    loss = task.loss(output, target, torch.zeros(B, task.out_dim, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(output.grad, torch.zeros_like(output))


@pytest.mark.parametrize("spec", ["findings", "sex", "age"])
def test_masked_samples_contribute_nothing(spec: str) -> None:
    """The loss over a batch with masked rows equals the loss over the labelled rows alone."""
    (task,) = build_tasks([spec])
    targets, masks = _batch(3)
    masks[task.target][:4] = False
    target, mask = task.select(targets, masks)
    output = torch.randn(B, task.out_dim)
    keep = mask.any(1)
    changed = torch.where(mask, target, torch.full_like(target, 7.0))  # garbage where masked
    assert torch.allclose(task.loss(output, changed, mask), task.loss(output[keep], target[keep], mask[keep]))


def test_single_finding_reads_its_column_and_pos_weight() -> None:
    (task,) = build_tasks(["findings:Pneumothorax"], pos_weight={"findings": np.arange(1, 15, dtype=np.float32)})
    targets, masks = _batch()
    target, _ = task.select(targets, masks)
    j = FINDING_INDEX["Pneumothorax"]
    assert torch.equal(target[:, 0], targets["findings"][:, j])
    assert task.name == "findings:Pneumothorax" and task.output_names == ("Pneumothorax",)
    assert task.pos_weight.tolist() == [float(j + 1)]
    (subset,) = build_tasks(["findings:Hernia,Effusion"])
    assert subset.select(targets, masks)[0].tolist() == targets["findings"][:, [13, 2]].tolist()


def test_full_findings_task_names_all_fourteen_in_order() -> None:
    (task,) = build_tasks(["findings"])
    assert task.output_names == FINDINGS and task.primary_metric == "auroc_mean" and task.higher_is_better


def test_pos_weight_multiplies_the_positive_loss_term() -> None:
    (plain,) = build_tasks(["abnormal"])
    (weighted,) = build_tasks(["abnormal"], pos_weight={"abnormal": np.array([4.0], np.float32)})
    output, target, mask = torch.zeros(2, 1), torch.tensor([[1.0], [0.0]]), torch.ones(2, 1, dtype=torch.bool)
    # log(2) per sample; the positive one counts 4x: (4 + 1) / 2 * log 2.
    assert plain.loss(output, target, mask).item() == pytest.approx(np.log(2))
    assert weighted.loss(output, target, mask).item() == pytest.approx(2.5 * np.log(2))


def test_classification_metrics_match_sklearn_and_skip_masked_rows() -> None:
    (task,) = build_tasks(["findings:Effusion,Mass"])
    rng = np.random.default_rng(0)
    target = (rng.random((200, 2)) > 0.6).astype(np.float32)
    pred = np.clip(target * 0.3 + rng.random((200, 2)) * 0.7, 0, 1)
    mask = np.ones_like(target, dtype=bool)
    mask[:20, 0] = False
    flipped = target.copy()
    flipped[:20, 0] = 1 - flipped[:20, 0]  # labels under the mask must not change anything
    metrics = task.metrics(pred, flipped, mask)
    expected = roc_auc_score(target[20:, 0], pred[20:, 0])
    assert metrics["auroc/Effusion"] == pytest.approx(expected)
    assert metrics["auroc_mean"] == pytest.approx((expected + roc_auc_score(target[:, 1], pred[:, 1])) / 2)
    assert 0 < metrics["ap/Mass"] <= 1 and metrics["n_labelled"] == 200.0


def test_auroc_of_a_single_class_column_is_nan_and_left_out_of_the_mean() -> None:
    (task,) = build_tasks(["findings:Effusion,Mass"])
    pred = np.array([[0.1, 0.2], [0.9, 0.8], [0.4, 0.3]])
    target = np.array([[0, 0], [1, 0], [0, 0]], dtype=np.float32)
    metrics = task.metrics(pred, target, np.ones_like(target, dtype=bool))
    assert metrics["auroc/Effusion"] == 1.0 and np.isnan(metrics["auroc/Mass"]) and metrics["auroc_mean"] == 1.0


def test_age_predicts_years_and_reports_mae_in_years() -> None:
    (task,) = build_tasks(["age"])
    assert task.kind == "regression" and task.primary_metric == "mae_years" and not task.higher_is_better
    from cxrmtl.labels import AGE_PRIOR_YEARS, AGE_SCALE

    output = torch.tensor([[(40.0 - AGE_PRIOR_YEARS) / AGE_SCALE], [(62.0 - AGE_PRIOR_YEARS) / AGE_SCALE]])
    pred = task.predict(output).numpy()
    assert pred[:, 0].tolist() == pytest.approx([40.0, 62.0])
    target = np.array([[45.0], [60.0]])
    metrics = task.metrics(pred, target, np.ones((2, 1), dtype=bool))
    assert metrics["mae_years"] == pytest.approx(3.5) and metrics["rmse_years"] == pytest.approx(np.sqrt(14.5))
    # The loss works on standardised age: a perfect prediction has zero loss, a 1-sd miss Huber 0.6 * (1 - 0.6 / 2).
    perfect = torch.tensor([[(45.0 - AGE_PRIOR_YEARS) / AGE_SCALE]])
    ones = torch.ones(1, 1, dtype=torch.bool)
    assert task.loss(perfect, torch.tensor([[45.0]]), ones).item() == pytest.approx(0.0, abs=1e-7)
    assert task.loss(perfect + 1.0, torch.tensor([[45.0]]), ones).item() == pytest.approx(0.42, rel=1e-5)
    empty = task.metrics(pred, target, np.zeros((2, 1), dtype=bool))
    assert np.isnan(empty["mae_years"]) and empty["n_labelled"] == 0.0


def test_build_tasks_keeps_order_and_builds_all_targets() -> None:
    tasks = build_tasks(list(TARGET_NAMES))
    assert [t.name for t in tasks] == list(TARGET_NAMES)
    assert [t.target for t in tasks] == list(TARGET_NAMES)


@pytest.mark.parametrize(
    ("specs", "kwargs", "match"),
    [
        (["lungs"], {}, "unknown task 'lungs'"),
        (["findings:Pneumonitis"], {}, r"unknown finding\(s\) \['Pneumonitis'\]"),
        (["findings:Mass,Mass"], {}, "names a finding twice"),
        (["sex:female"], {}, "takes no ':' argument"),
        (["age:x"], {}, "takes no ':' argument"),
        (["sex", "sex"], {}, r"\['sex'\] listed more than once"),
        ([], {}, "non-empty list"),
        ("findings", {}, "non-empty list"),
        ([""], {}, "non-empty string"),
        (["findings"], {"loss": "hinge"}, "'hinge' is unknown"),
        (["findings"], {"gama": 2}, r"unknown option\(s\) \['gama'\]"),
        (["age"], {"regression_loss": "l3"}, "'l3' is unknown"),
        (["findings"], {"pos_weight": np.ones(14)}, "expected a mapping"),
        (["findings"], {"pos_weight": {"lungs": np.ones(3)}}, r"unknown target\(s\) \['lungs'\]"),
        (["findings"], {"pos_weight": {"findings": np.ones(3)}}, "expected 14 positive finite values"),
        (["sex"], {"pos_weight": {"sex": np.array([0.0])}}, "expected 1 positive finite values"),
    ],
)
def test_bad_task_configs_raise_config_error(specs: object, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_tasks(specs, **kwargs)


def test_metrics_reject_wrong_shapes() -> None:
    (task,) = build_tasks(["findings"])
    with pytest.raises(ConfigError, match=r"pred has shape \(4, 3\), expected \(N, 14\)"):
        task.metrics(np.zeros((4, 3)), np.zeros((4, 3)), np.ones((4, 3), dtype=bool))


def test_compute_pos_weight_counts_only_labelled_rows() -> None:
    values = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float32)
    mask = np.ones_like(values, dtype=bool)
    mask[4] = False  # the last row is unlabelled everywhere
    weight = compute_pos_weight(values, mask)
    # column 0: 2 pos / 2 neg -> 1; column 1: no positives -> 1; column 2: 2 pos / 2 neg -> 1.
    assert weight.tolist() == [1.0, 1.0, 1.0] and weight.dtype == np.float32
    mask[4] = True
    assert compute_pos_weight(values, mask).tolist() == pytest.approx([2 / 3, 4.0, 2 / 3])
    assert compute_pos_weight(values[:, 1], mask[:, 1], max_weight=3.0).tolist() == [3.0]
    with pytest.raises(ConfigError, match="must share"):
        compute_pos_weight(values, mask[:, :2])


def test_compute_pos_weights_covers_classification_targets_of_given_rows() -> None:
    n = 10
    findings = np.zeros((n, 14), np.float32)
    findings[:2, 2] = 1
    targets = {
        "findings": (findings, np.ones((n, 14), bool)),
        "abnormal": (findings.max(1), np.ones(n, bool)),
        "age": (np.full(n, 50.0, np.float32), np.ones(n, bool)),
        "sex": (np.array([1, 0] * 5, np.float32), np.ones(n, bool)),
        "view": (np.zeros(n, np.float32), np.ones(n, bool)),
    }
    weights = compute_pos_weights(targets, np.arange(n))
    assert set(weights) == {"findings", "abnormal", "sex", "view"}
    assert weights["findings"][2] == pytest.approx(4.0) and weights["findings"][0] == 1.0
    assert weights["sex"].tolist() == [1.0]
    train_only = compute_pos_weights(targets, np.array([0, 2, 3, 4]))
    assert train_only["abnormal"].tolist() == [3.0]
    tasks = build_tasks(["findings", "abnormal", "sex", "view", "age"], pos_weight=weights)
    assert tasks[0].pos_weight.shape == (14,)
