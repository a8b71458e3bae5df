"""Element-wise losses (focal, ASL, robust regression) and the masked mean."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxrmtl.errors import ConfigError
from cxrmtl.tasks.losses import (
    CLASSIFICATION_LOSSES,
    REGRESSION_LOSSES,
    build_classification_loss,
    build_regression_loss,
    masked_mean,
)


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(16, 3, generator=g) * 3
    target = (torch.rand(16, 3, generator=g) > 0.7).float()
    return logits, target


def test_masked_mean_ignores_masked_entries_even_when_nan() -> None:
    values = torch.tensor([1.0, float("nan"), 3.0, float("inf")], requires_grad=True)
    mask = torch.tensor([True, False, True, False])
    out = masked_mean(values, mask)
    out.backward()
    assert out.item() == pytest.approx(2.0)
    assert torch.equal(values.grad, torch.tensor([0.5, 0.0, 0.5, 0.0]))


def test_masked_mean_of_empty_mask_is_zero_with_graph() -> None:
    values = torch.randn(5, requires_grad=True)
    out = masked_mean(values, torch.zeros(5, dtype=torch.bool))
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(values.grad, torch.zeros(5))


def test_bce_matches_torch_and_pos_weight_scales_positives() -> None:
    logits, target = _data()
    loss = build_classification_loss("bce")
    assert torch.allclose(loss(logits, target), F.binary_cross_entropy_with_logits(logits, target, reduction="none"))
    pw = torch.tensor([1.0, 3.0, 10.0])
    weighted = loss(logits, target, pw)
    expected = loss(logits, target) * torch.where(target > 0, pw.expand_as(target), torch.ones_like(target))
    assert torch.allclose(weighted, expected, atol=1e-6)


def test_focal_with_gamma_zero_is_bce_and_downweights_easy_examples() -> None:
    logits, target = _data(1)
    bce = build_classification_loss("bce")(logits, target)
    assert torch.allclose(build_classification_loss("focal", gamma=0.0)(logits, target), bce, atol=1e-6)
    focal = build_classification_loss("focal", gamma=2.0)
    easy, hard = focal(torch.tensor([4.0]), torch.tensor([1.0])), focal(torch.tensor([-1.0]), torch.tensor([1.0]))
    bce_easy = F.binary_cross_entropy_with_logits(torch.tensor([4.0]), torch.tensor([1.0]))
    bce_hard = F.binary_cross_entropy_with_logits(torch.tensor([-1.0]), torch.tensor([1.0]))
    # (1 - p_t)^2: the confident correct example keeps ~0.03 % of its BCE, the wrong one ~53 %.
    assert (easy / bce_easy).item() < 1e-3 < 0.5 < (hard / bce_hard).item()


def test_focal_alpha_weighs_positives_and_negatives() -> None:
    logits, target = torch.zeros(2), torch.tensor([1.0, 0.0])
    out = build_classification_loss("focal", gamma=0.0, alpha=0.25)(logits, target)
    base = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert torch.allclose(out, base * torch.tensor([0.25, 0.75]))


def test_asl_reduces_to_bce_and_clip_discards_easy_negatives() -> None:
    logits, target = _data(2)
    bce = build_classification_loss("bce")(logits, target)
    plain = build_classification_loss("asl", gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
    assert torch.allclose(plain(logits, target), bce, atol=1e-5)
    asl = build_classification_loss("asl")  # paper defaults: gamma_neg=4, gamma_pos=0, clip=0.05
    easy_negative = asl(torch.tensor([-4.0]), torch.tensor([0.0]))  # p = 0.018 < clip
    assert easy_negative.item() == 0.0
    positive = asl(torch.tensor([0.5]), torch.tensor([1.0]))
    assert torch.allclose(positive, F.binary_cross_entropy_with_logits(torch.tensor([0.5]), torch.tensor([1.0])))


def test_huber_and_smooth_l1_regimes() -> None:
    pred = torch.tensor([0.0, 0.0])
    target = torch.tensor([0.05, 0.5])  # 5 and 50 years at scale 100
    huber = build_regression_loss("huber", delta=0.1)(pred, target)
    assert huber[0].item() == pytest.approx(0.5 * 0.05**2)
    assert huber[1].item() == pytest.approx(0.1 * (0.5 - 0.05))  # linear beyond delta
    smooth = build_regression_loss("smooth_l1", beta=0.1)(pred, target)
    assert torch.allclose(smooth, huber / 0.1)
    assert torch.allclose(build_regression_loss("l1")(pred, target), target)
    assert torch.allclose(build_regression_loss("mse")(pred, target), target**2)


@pytest.mark.parametrize("name", sorted(CLASSIFICATION_LOSSES))
def test_classification_losses_have_finite_gradients_at_extreme_logits(name: str) -> None:
    logits = torch.tensor([-60.0, -5.0, 0.0, 5.0, 60.0], requires_grad=True)
    target = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    loss = build_classification_loss(name)(logits, target, torch.full((5,), 2.0))
    assert loss.shape == (5,) and torch.isfinite(loss).all() and (loss >= 0).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", sorted(REGRESSION_LOSSES))
def test_regression_losses_are_zero_at_target_and_grow(name: str) -> None:
    loss = build_regression_loss(name)
    target = torch.tensor([0.3, 0.3, 0.3])
    values = loss(torch.tensor([0.3, 0.4, 0.9]), target)
    assert values[0].item() == 0.0 and 0 < values[1].item() < values[2].item()


def test_unknown_loss_and_option_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="'hinge' is unknown"):
        build_classification_loss("hinge")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['gama'\]"):
        build_classification_loss("focal", gama=2.0)
    with pytest.raises(ConfigError, match="gamma must be >= 0"):
        build_classification_loss("focal", gamma=-1.0)
    with pytest.raises(ConfigError, match="clip must be in"):
        build_classification_loss("asl", clip=1.5)
    with pytest.raises(ConfigError, match="delta must be > 0"):
        build_regression_loss("huber", delta=0)
    with pytest.raises(ConfigError, match="regression loss 'l2' is unknown"):
        build_regression_loss("l2")
