"""Element-wise losses for the tasks, and the masked mean that turns them into one number per task.

Classification losses take logits and 0/1 targets and return an element-wise loss (no reduction) so a task can
drop samples whose label is missing (masks, not NaN tricks). Regression losses take predictions and targets in the
task's scaled units. Both families live in registries (``CLASSIFICATION_LOSSES``, ``REGRESSION_LOSSES``) so a config
names a loss by string; unknown names or options raise ``ConfigError`` naming them.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cxrmtl.errors import ConfigError

CLASSIFICATION_LOSSES: dict[str, type] = {}
REGRESSION_LOSSES: dict[str, type] = {}


def _register(registry: dict[str, type], name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        registry[name] = cls
        return cls

    return wrap


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the True entries of ``mask``; exactly 0 (graph kept) when no entry is True.

    Masked-out entries are replaced, not multiplied, so a NaN/inf there cannot leak into the sum.
    """
    mask = mask.to(torch.bool)
    kept = torch.where(mask, values, torch.zeros_like(values))
    count = mask.sum().clamp_min(1).to(values.dtype)
    return kept.sum() / count


def _pos_weight_tensor(pos_weight: Tensor | None, like: Tensor) -> Tensor | None:
    if pos_weight is None:
        return None
    return pos_weight.to(device=like.device, dtype=like.dtype)


@_register(CLASSIFICATION_LOSSES, "bce")
@dataclasses.dataclass(frozen=True)
class BCELoss:
    """Binary cross-entropy on logits; ``pos_weight`` multiplies the positive term (class imbalance)."""

    def __call__(self, logits: Tensor, target: Tensor, pos_weight: Tensor | None = None) -> Tensor:
        return F.binary_cross_entropy_with_logits(
            logits, target, pos_weight=_pos_weight_tensor(pos_weight, logits), reduction="none"
        )


@_register(CLASSIFICATION_LOSSES, "focal")
@dataclasses.dataclass(frozen=True)
class FocalLoss:
    """Focal loss (Lin et al., ICCV 2017): BCE scaled by (1 - p_t)^gamma so easy examples count less.

    gamma = 2 is the paper's best setting; ``alpha`` (0.25 in the paper) weighs positives vs negatives and is off
    by default because ``pos_weight`` already expresses the imbalance here.
    """

    gamma: float = 2.0
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise ConfigError(f"loss focal: gamma must be >= 0, got {self.gamma}")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"loss focal: alpha must be in [0, 1], got {self.alpha}")

    def __call__(self, logits: Tensor, target: Tensor, pos_weight: Tensor | None = None) -> Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        loss = bce * (1 - p_t).pow(self.gamma)
        if self.alpha is not None:
            loss = loss * (self.alpha * target + (1 - self.alpha) * (1 - target))
        pw = _pos_weight_tensor(pos_weight, logits)
        if pw is not None:
            loss = loss * (1 + (pw - 1) * target)
        return loss


@_register(CLASSIFICATION_LOSSES, "asl")
@dataclasses.dataclass(frozen=True)
class AsymmetricLoss:
    """Asymmetric loss (Ridnik et al., ICCV 2021) for multi-label problems with many negatives.

    Negatives are focused harder (gamma_neg) than positives (gamma_pos) and their probability is shifted by
    ``clip`` (probability margin m), which discards very easy negatives and mislabeled ones. Defaults
    gamma_neg=4, gamma_pos=0, clip=0.05 are the paper's recommended setting (Sec. 3 and Table 1).
    """

    gamma_neg: float = 4.0
    gamma_pos: float = 0.0
    clip: float = 0.05
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.gamma_neg < 0 or self.gamma_pos < 0:
            raise ConfigError(f"loss asl: gamma_neg and gamma_pos must be >= 0, got {self.gamma_neg}, {self.gamma_pos}")
        if not 0.0 <= self.clip < 1.0:
            raise ConfigError(f"loss asl: clip must be in [0, 1), got {self.clip}")

    def __call__(self, logits: Tensor, target: Tensor, pos_weight: Tensor | None = None) -> Tensor:
        p = torch.sigmoid(logits)
        loss_pos = target * F.logsigmoid(logits) * (1 - p).pow(self.gamma_pos)
        if self.clip > 0:
            p_neg = (p - self.clip).clamp_min(0)
            log_neg = torch.log((1 - p_neg).clamp_min(self.eps))
        else:  # log(1 - sigmoid(x)) = logsigmoid(-x), exact for large |x|
            p_neg, log_neg = p, F.logsigmoid(-logits)
        loss_neg = (1 - target) * log_neg * p_neg.pow(self.gamma_neg)
        pw = _pos_weight_tensor(pos_weight, logits)
        if pw is not None:
            loss_pos = loss_pos * pw
        return -(loss_pos + loss_neg)


@_register(REGRESSION_LOSSES, "huber")
@dataclasses.dataclass(frozen=True)
class HuberLoss:
    """Huber loss: squared near zero, linear beyond ``delta`` (robust to the few implausible ages in NIH).

    delta = 0.6 in standardised units is 10 years for age (sd 16.6 years): errors above a decade count linearly.
    """

    delta: float = 0.6

    def __post_init__(self) -> None:
        if self.delta <= 0:
            raise ConfigError(f"regression loss huber: delta must be > 0, got {self.delta}")

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.huber_loss(pred, target, delta=self.delta, reduction="none")


@_register(REGRESSION_LOSSES, "smooth_l1")
@dataclasses.dataclass(frozen=True)
class SmoothL1Loss:
    """Smooth-L1 (Huber divided by beta), the Fast R-CNN form; beta in standardised units (0.6 = 10 years)."""

    beta: float = 0.6

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"regression loss smooth_l1: beta must be > 0, got {self.beta}")

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.smooth_l1_loss(pred, target, beta=self.beta, reduction="none")


@_register(REGRESSION_LOSSES, "l1")
@dataclasses.dataclass(frozen=True)
class L1Loss:
    """Absolute error (the median regressor; what MAE reports)."""

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).abs()


@_register(REGRESSION_LOSSES, "mse")
@dataclasses.dataclass(frozen=True)
class MSELoss:
    """Squared error (not robust; kept as a baseline)."""

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).pow(2)


def _build(registry: Mapping[str, type], family: str, name: str, kwargs: Mapping[str, Any]) -> Any:
    if name not in registry:
        raise ConfigError(f"{family} {name!r} is unknown; choose one of {sorted(registry)}")
    cls = registry[name]
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"{family} {name!r}: unknown option(s) {unknown}; accepted: {sorted(accepted)}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # wrong value types reach the dataclass constructor
        raise ConfigError(f"{family} {name!r}: {exc}") from exc


def build_classification_loss(name: str = "bce", **kwargs: Any) -> Callable[..., Tensor]:
    """Return the classification loss ``name`` ("bce", "focal", "asl") configured with ``kwargs``."""
    return _build(CLASSIFICATION_LOSSES, "loss", name, kwargs)


def build_regression_loss(name: str = "huber", **kwargs: Any) -> Callable[..., Tensor]:
    """Return the regression loss ``name`` ("huber", "smooth_l1", "l1", "mse") configured with ``kwargs``."""
    return _build(REGRESSION_LOSSES, "regression loss", name, kwargs)
