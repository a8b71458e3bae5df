"""The ``Task`` contract, the task registry and ``build_tasks``.

A task owns everything that is specific to one output of the shared network: which target columns it reads, which
samples count (masks), its loss, how logits become predictions, and its metrics. The training loop only iterates
over tasks, so adding a task kind means adding a module that registers a factory here (no if-chains).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from cxrmtl.errors import ConfigError
from cxrmtl.labels import TARGET_NAMES


class Task(abc.ABC):
    """One prediction task on top of the shared backbone (see docs/architecture.md)."""

    name: str
    target: str
    kind: ClassVar[str]
    output_names: tuple[str, ...]
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]

    @property
    def out_dim(self) -> int:
        """Number of output units of this task's head."""
        return len(self.output_names)

    def select(self, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Pick this task's (target, mask) from a batch, both shaped (B, out_dim); target float32, mask bool."""
        target, mask = targets[self.target], masks[self.target]
        if target.dim() == 1:
            target, mask = target.unsqueeze(1), mask.unsqueeze(1)
        index = self._columns()
        if index is not None:
            target, mask = target[:, index], mask[:, index]
        return target.float(), mask.bool()

    def init_head(self, head: nn.Linear) -> None:
        """Initialise this task's head after creation (default: PyTorch's init; age starts at a prior mean)."""
        return None

    def _columns(self) -> list[int] | None:
        """Columns of the target this task reads, or None for all of them."""
        return None

    @abc.abstractmethod
    def loss(self, output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Scalar loss over the masked entries; exactly 0 (graph kept) when ``mask`` is all False."""

    @abc.abstractmethod
    def predict(self, output: Tensor) -> Tensor:
        """Network output -> probabilities (classification) or values in natural units (regression)."""

    @abc.abstractmethod
    def metrics(self, pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
        """Metrics on a whole split; ``pred`` is what ``predict`` returned, all arrays (N, out_dim)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, out_dim={self.out_dim})"


# A factory receives the part of the spec after ":" (or None) and the shared loss settings.
TaskFactory = Callable[..., Task]
TASKS: dict[str, TaskFactory] = {}
TASK_KINDS: dict[str, str] = {}


def register_task(prefix: str, *, kind: str) -> Callable[[TaskFactory], TaskFactory]:
    """Register a task factory under ``prefix`` (the part of a spec before ":"); ``kind`` as in ``Task.kind``."""

    def wrap(factory: TaskFactory) -> TaskFactory:
        if prefix in TASKS:
            raise ValueError(f"task {prefix!r} registered twice")
        TASKS[prefix] = factory
        TASK_KINDS[prefix] = kind
        return factory

    return wrap


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"findings:Pneumothorax"`` into ``("findings", "Pneumothorax")``; unknown prefix -> ConfigError."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"tasks: every entry must be a non-empty string, got {spec!r}")
    prefix, sep, arg = spec.strip().partition(":")
    if prefix not in TASKS:
        raise ConfigError(f"tasks: unknown task {spec!r}; choose from {sorted(TASKS)} (e.g. 'findings:Pneumothorax')")
    return prefix, (arg if sep else None)


def build_tasks(
    specs: Sequence[str],
    *,
    loss: str = "bce",
    pos_weight: Mapping[str, np.ndarray] | None = None,
    regression_loss: str = "huber",
    regression_kwargs: Mapping[str, Any] | None = None,
    **loss_kwargs: Any,
) -> list[Task]:
    """Build the tasks named by ``specs`` (e.g. ``["findings", "abnormal", "age", "sex", "view"]``).

    ``loss`` (+ ``loss_kwargs``) is the classification loss shared by all classification tasks; ``pos_weight`` maps
    a target name (``"findings"``, ``"abnormal"``, ...) to its full-width positive weights (see
    ``compute_pos_weights``), each task slices its own columns. Unknown specs, duplicates or options raise
    ConfigError.
    """
    from cxrmtl.tasks.losses import build_classification_loss, build_regression_loss

    if isinstance(specs, str) or not specs:
        raise ConfigError(f"tasks: expected a non-empty list of task names, got {specs!r}")
    if pos_weight is not None and not isinstance(pos_weight, Mapping):
        raise ConfigError("pos_weight: expected a mapping target name -> array (see compute_pos_weights)")
    unknown_targets = sorted(set(pos_weight or {}) - set(TARGET_NAMES))
    if unknown_targets:
        raise ConfigError(f"pos_weight: unknown target(s) {unknown_targets}; targets are {list(TARGET_NAMES)}")
    cls_loss = build_classification_loss(loss, **loss_kwargs)
    reg_loss = build_regression_loss(regression_loss, **dict(regression_kwargs or {}))
    tasks: list[Task] = []
    for spec in specs:
        prefix, arg = parse_spec(spec)
        tasks.append(
            TASKS[prefix](arg, cls_loss=cls_loss, reg_loss=reg_loss, pos_weight=(pos_weight or {}).get(prefix))
        )
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"tasks: {duplicates} listed more than once")
    return tasks


def compute_pos_weight(values: np.ndarray, mask: np.ndarray, *, max_weight: float | None = None) -> np.ndarray:
    """Positive-class weight per column = negatives / positives over the labelled rows (BCE ``pos_weight``).

    A column without positives or without negatives gets 1 (nothing to rebalance). ``values`` and ``mask`` are
    (N,) or (N, K); the result is (1,) or (K,) float32. ``max_weight`` caps the weight of very rare classes.
    """
    values = np.asarray(values, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if values.shape != mask.shape or values.ndim not in (1, 2):
        raise ConfigError(f"pos_weight: values {values.shape} and mask {mask.shape} must share a (N,) or (N, K) shape")
    if values.ndim == 1:
        values, mask = values[:, None], mask[:, None]
    labelled = np.where(mask, values, 0.0)
    pos = (labelled > 0.5).sum(axis=0).astype(np.float64)
    neg = (mask & (labelled <= 0.5)).sum(axis=0).astype(np.float64)
    weight = np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1.0), 1.0)
    if max_weight is not None:
        weight = np.minimum(weight, max_weight)
    return weight.astype(np.float32)


def compute_pos_weights(
    targets: Mapping[str, tuple[np.ndarray, np.ndarray]], rows: np.ndarray, *, max_weight: float | None = None
) -> dict[str, np.ndarray]:
    """``pos_weight`` for every classification target, from ``NIHIndex.targets()`` restricted to ``rows`` (train).

    The result is what ``build_tasks(pos_weight=...)`` takes.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for name, kind in TASK_KINDS.items():
        if kind == "regression" or name not in targets:
            continue
        values, mask = targets[name]
        out[name] = compute_pos_weight(values[rows], mask[rows], max_weight=max_weight)
    return out
