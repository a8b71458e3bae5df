"""``MultiTaskNet``: one timm backbone read once per image, one linear head per task in an ``nn.ModuleDict``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from torch import Tensor, nn

from cxrmtl.errors import ConfigError
from cxrmtl.models.backbone import create_backbone


class HeadSpec(Protocol):
    """What the network needs from a task (``cxrmtl.tasks.base.Task`` has it): models sit below tasks."""

    name: str
    output_names: Sequence[str]

    @property
    def out_dim(self) -> int: ...

    def init_head(self, head: nn.Linear) -> None: ...


def head_key(task_name: str) -> str:
    """ModuleDict key for a task name (module names may not contain '.'; ':' and ',' are fine)."""
    return task_name.replace(".", "_")


class MultiTaskNet(nn.Module):
    """Shared backbone + per-task heads; ``forward`` returns ``{task name: (B, out_dim) tensor}``.

    ``drop_rate`` is dropout on the shared pooled features before every head (applied here rather than through
    timm so that it means the same thing for every backbone).
    """

    def __init__(
        self,
        *,
        backbone: str,
        tasks: Sequence[HeadSpec],
        pretrained: bool | str | Path = False,
        drop_rate: float = 0.0,
        allow_random_init: bool = False,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ConfigError("tasks: a MultiTaskNet needs at least one task")
        if not 0.0 <= drop_rate < 1.0:
            raise ConfigError(f"model.drop_rate: must be in [0, 1), got {drop_rate}")
        self.backbone_name = backbone
        self.backbone = create_backbone(backbone, pretrained=pretrained, allow_random_init=allow_random_init)
        self.num_features = int(self.backbone.num_features)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.task_names: tuple[str, ...] = tuple(t.name for t in tasks)
        self.output_names: dict[str, tuple[str, ...]] = {t.name: tuple(t.output_names) for t in tasks}
        keys = [head_key(n) for n in self.task_names]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"tasks: names {list(self.task_names)} collide as module keys")
        self.heads = nn.ModuleDict(
            {key: nn.Linear(self.num_features, t.out_dim) for key, t in zip(keys, tasks, strict=True)}
        )
        for key, task in zip(keys, tasks, strict=True):
            task.init_head(self.heads[key])

    def features(self, x: Tensor) -> Tensor:
        """Pooled shared features (B, num_features) of normalised images x (B, 1, H, W)."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.dropout(self.features(x))
        return {name: self.heads[head_key(name)](feats) for name in self.task_names}

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable backbone parameters: what gradient-weighting methods balance across tasks."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def head_parameters(self, task_name: str | None = None) -> list[nn.Parameter]:
        """Trainable head parameters of one task, or of all heads when ``task_name`` is None."""
        modules = self.heads.values() if task_name is None else [self.heads[head_key(task_name)]]
        return [p for m in modules for p in m.parameters() if p.requires_grad]
