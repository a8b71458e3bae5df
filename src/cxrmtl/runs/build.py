"""Config -> tasks and model: the one place both training and ``load_run`` rebuild them from, so they agree."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrmtl.config import Config

if TYPE_CHECKING:
    from cxrmtl.data.nih import NIHIndex
    from cxrmtl.models import MultiTaskNet


def build_tasks_for(cfg: Config, *, pos_weight: Mapping[str, np.ndarray] | None) -> list[Any]:
    """The tasks named in ``cfg.tasks`` with their losses (``pos_weight`` from ``train_pos_weight`` or None)."""
    from cxrmtl.tasks import build_tasks

    t = cfg.tasks
    return build_tasks(list(t.specs), loss=t.loss, pos_weight=pos_weight, regression_loss=t.regression_loss,
                       regression_kwargs=dict(t.regression_kwargs), **dict(t.loss_kwargs))


def train_pos_weight(
    cfg: Config, index: NIHIndex, *, train_targets: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
) -> dict[str, np.ndarray] | None:
    """Positive-class weights from the training split's prevalence when ``tasks.pos_weight`` is on.

    ``train_targets`` (name -> (values, mask) of the samples training sees): used instead of the index's training
    rows when the labels training sees differ from the index's (a label cut, ``data.labelcut``).
    """
    if not cfg.tasks.pos_weight:
        return None
    from cxrmtl.tasks import compute_pos_weights

    cap = cfg.tasks.pos_weight_max or None
    if train_targets is not None:
        rows = np.arange(len(train_targets["findings"][0]))
        return compute_pos_weights(train_targets, rows, max_weight=cap)
    return compute_pos_weights(index.targets(), index.rows("train"), max_weight=cap)


def build_model(cfg: Config, tasks: Sequence[Any], *, pretrained: bool | str | None = None) -> MultiTaskNet:
    """The MultiTaskNet of ``cfg.model`` (``pretrained`` overrides the config, e.g. False when loading a run)."""
    from cxrmtl.models import MultiTaskNet

    m = cfg.model
    init = m.pretrained if pretrained is None else pretrained
    return MultiTaskNet(backbone=m.backbone, tasks=tasks, pretrained=init, drop_rate=m.drop_rate,
                        allow_random_init=m.allow_random_init)
