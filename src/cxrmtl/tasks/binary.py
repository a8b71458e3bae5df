"""Binary tasks read from one target column: ``abnormal`` (any finding), ``sex`` (1 = F), ``view`` (1 = AP).

The codes come from labels.SEX_CODES / labels.VIEW_CODES via the index; the single output is the probability of
code 1 and is named after the task (``("sex",)`` = P(female), ``("view",)`` = P(AP)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np
from torch import Tensor

from cxrmtl.errors import ConfigError
from cxrmtl.tasks.base import register_task
from cxrmtl.tasks.classification import ClassificationTask


class BinaryTask(ClassificationTask):
    """One sigmoid output for a 0/1 target; AUROC is the primary metric (``auroc_mean`` equals ``auroc/<name>``)."""

    kind: ClassVar[str] = "binary"

    def __init__(self, *, target: str, loss_fn: Callable[..., Tensor], pos_weight: np.ndarray | None) -> None:
        super().__init__(name=target, target=target, output_names=(target,), loss_fn=loss_fn, pos_weight=pos_weight)


def _binary_factory(target: str) -> Callable[..., BinaryTask]:
    def factory(
        arg: str | None, *, cls_loss: Callable[..., Tensor], pos_weight: np.ndarray | None, **_: object
    ) -> BinaryTask:
        if arg is not None:
            raise ConfigError(f"tasks: {target!r} takes no ':' argument, got '{target}:{arg}'")
        return BinaryTask(target=target, loss_fn=cls_loss, pos_weight=pos_weight)

    return factory


for _target in ("abnormal", "sex", "view"):
    register_task(_target, kind="binary")(_binary_factory(_target))
