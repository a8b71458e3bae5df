"""Age regression: the head predicts standardised age, (years - mean) / sd; a robust loss fits it; MAE in years."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from cxrmtl.errors import ConfigError
from cxrmtl.labels import AGE_PRIOR_YEARS, AGE_SCALE
from cxrmtl.tasks.base import Task, register_task
from cxrmtl.tasks.classification import check_metric_inputs
from cxrmtl.tasks.losses import masked_mean


class AgeTask(Task):
    """Patient age in years; masked where the index has no age (NaN)."""

    kind: ClassVar[str] = "regression"
    primary_metric: ClassVar[str] = "mae_years"
    higher_is_better: ClassVar[bool] = False

    def __init__(
        self, *, loss_fn: Callable[..., Tensor], scale: float = AGE_SCALE, offset: float = AGE_PRIOR_YEARS
    ) -> None:
        self.name = "age"
        self.target = "age"
        self.output_names = ("age",)
        self.loss_fn = loss_fn
        self.scale = scale
        self.offset = offset

    def init_head(self, head: nn.Linear) -> None:
        """Start the prediction at the NIH mean age (labels.AGE_PRIOR_YEARS): standardised output 0."""
        with torch.no_grad():
            head.bias.zero_()

    def loss(self, output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        output = output.float()
        target = torch.where(mask, (target.float() - self.offset) / self.scale, torch.zeros_like(output))
        return masked_mean(self.loss_fn(output, target), mask)

    def predict(self, output: Tensor) -> Tensor:
        return output.float() * self.scale + self.offset

    def metrics(self, pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
        pred, target, mask = np.asarray(pred), np.asarray(target), np.asarray(mask, dtype=bool)
        check_metric_inputs(self, pred, target, mask)
        err = (pred - target)[mask]
        if err.size == 0:
            nan = float("nan")
            return {"mae_years": nan, "rmse_years": nan, "median_ae_years": nan, "n_labelled": 0.0}
        return {
            "mae_years": float(np.abs(err).mean()),
            "rmse_years": float(np.sqrt((err**2).mean())),
            "median_ae_years": float(np.median(np.abs(err))),
            "n_labelled": float(err.size),
        }


@register_task("age", kind="regression")
def _age(arg: str | None, *, reg_loss: Callable[..., Tensor], **_: object) -> AgeTask:
    if arg is not None:
        raise ConfigError(f"tasks: 'age' takes no ':' argument, got 'age:{arg}'")
    return AgeTask(loss_fn=reg_loss)
