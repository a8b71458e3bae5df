"""Shared behaviour of the classification tasks: masked loss on logits, sigmoid predictions, AUROC metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from cxrmtl.errors import ConfigError
from cxrmtl.tasks.base import Task
from cxrmtl.tasks.losses import masked_mean


def _per_column(score: Callable[[np.ndarray, np.ndarray], float], pred: np.ndarray, target: np.ndarray,
                mask: np.ndarray) -> np.ndarray:
    """``score(y, p)`` of every column over its labelled rows; NaN where a column has only one class among them."""
    out = np.full(pred.shape[1], np.nan, dtype=np.float64)
    for j in range(pred.shape[1]):
        keep = mask[:, j].astype(bool)
        y = target[keep, j] > 0.5
        if 0 < y.sum() < y.size:
            out[j] = score(y, pred[keep, j])
    return out


def auroc_per_column(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """AUROC of every column over its labelled rows; NaN where a column has only one class among them."""
    from sklearn.metrics import roc_auc_score

    return _per_column(roc_auc_score, pred, target, mask)


def average_precision_per_column(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Average precision (area under the precision-recall curve) per column; NaN without both classes."""
    from sklearn.metrics import average_precision_score

    return _per_column(average_precision_score, pred, target, mask)


def nanmean(values: np.ndarray) -> float:
    """Mean of the finite entries, NaN when there are none (no RuntimeWarning)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def check_metric_inputs(task: Task, pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> None:
    """Raise ConfigError when the arrays do not have the task's (N, out_dim) shape."""
    for field, arr in (("pred", pred), ("target", target), ("mask", mask)):
        if arr.ndim != 2 or arr.shape[1] != task.out_dim or arr.shape[0] != pred.shape[0]:
            raise ConfigError(
                f"task {task.name!r} metrics: {field} has shape {arr.shape}, expected (N, {task.out_dim})"
            )


class ClassificationTask(Task):
    """Sigmoid outputs, one per unit; loss from the classification-loss registry with optional pos_weight."""

    primary_metric: ClassVar[str] = "auroc_mean"
    higher_is_better: ClassVar[bool] = True

    def __init__(
        self,
        *,
        name: str,
        target: str,
        output_names: tuple[str, ...],
        loss_fn: Callable[..., Tensor],
        pos_weight: np.ndarray | None = None,
    ) -> None:
        self.name = name
        self.target = target
        self.output_names = tuple(output_names)
        self.loss_fn = loss_fn
        self.pos_weight = None if pos_weight is None else self._check_pos_weight(pos_weight)

    def _check_pos_weight(self, pos_weight: np.ndarray) -> Tensor:
        weight = np.asarray(pos_weight, dtype=np.float32).reshape(-1)
        columns = self._columns()
        if columns is not None and weight.size > len(columns):
            weight = weight[columns]
        if weight.size != self.out_dim or not np.all(np.isfinite(weight)) or np.any(weight <= 0):
            raise ConfigError(
                f"pos_weight for task {self.name!r}: expected {self.out_dim} positive finite values, got {weight}"
            )
        return torch.from_numpy(weight.copy())

    def loss(self, output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        output = output.float()
        target = torch.where(mask, target.float(), torch.zeros_like(output))
        return masked_mean(self.loss_fn(output, target, self.pos_weight), mask)

    def predict(self, output: Tensor) -> Tensor:
        return torch.sigmoid(output.float())

    def metrics(self, pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
        pred, target, mask = np.asarray(pred), np.asarray(target), np.asarray(mask, dtype=bool)
        check_metric_inputs(self, pred, target, mask)
        auroc = auroc_per_column(pred, target, mask)
        ap = average_precision_per_column(pred, target, mask)
        out = {"auroc_mean": nanmean(auroc), "ap_mean": nanmean(ap)}
        for j, unit in enumerate(self.output_names):
            out[f"auroc/{unit}"] = float(auroc[j])
            out[f"ap/{unit}"] = float(ap[j])
        out["n_labelled"] = float(mask.any(axis=1).sum())
        return out
