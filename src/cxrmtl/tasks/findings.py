"""The 14 ChestX-ray14 findings as one multi-label task, or any subset (``findings:Pneumothorax``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np
from torch import Tensor

from cxrmtl.errors import ConfigError
from cxrmtl.labels import FINDING_INDEX, FINDINGS
from cxrmtl.tasks.base import register_task
from cxrmtl.tasks.classification import ClassificationTask


class FindingsTask(ClassificationTask):
    """Multi-label findings: one sigmoid per finding, labels.FINDINGS order (or the chosen subset's order)."""

    kind: ClassVar[str] = "multilabel"

    def __init__(self, *, findings: tuple[str, ...], loss_fn: Callable[..., Tensor], pos_weight: np.ndarray | None):
        self._index = [FINDING_INDEX[f] for f in findings]
        name = "findings" if findings == FINDINGS else "findings:" + ",".join(findings)
        super().__init__(name=name, target="findings", output_names=findings, loss_fn=loss_fn, pos_weight=pos_weight)

    def _columns(self) -> list[int] | None:
        return None if tuple(self.output_names) == FINDINGS else self._index


def parse_findings(arg: str | None) -> tuple[str, ...]:
    """``None`` -> all 14; ``"Pneumothorax,Effusion"`` -> that subset; unknown names -> ConfigError."""
    if arg is None:
        return FINDINGS
    names = tuple(part.strip() for part in arg.split(","))
    unknown = [n for n in names if n not in FINDING_INDEX]
    if unknown or not names:
        raise ConfigError(f"tasks: unknown finding(s) {unknown} in 'findings:{arg}'; findings are {list(FINDINGS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"tasks: 'findings:{arg}' names a finding twice")
    return names


@register_task("findings", kind="multilabel")
def _findings(arg: str | None, *, cls_loss: Callable[..., Tensor], pos_weight: np.ndarray | None, **_: object):
    return FindingsTask(findings=parse_findings(arg), loss_fn=cls_loss, pos_weight=pos_weight)
