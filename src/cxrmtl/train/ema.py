"""Exponential moving average of model weights (Polyak averaging), used for validation and the saved best model.

Why: an EMA of weights typically gives a smoother, slightly better model for the same training (timm's ModelEmaV2
does the same). Buffers (BatchNorm running statistics) are copied, not averaged, as in timm.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Holds a frozen copy of ``model`` updated as ``ema = decay * ema + (1 - decay) * model`` after each step."""

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the current weights of ``model`` (unwrapped, same architecture) into the average."""
        source = model.state_dict()
        for name, value in self.module.state_dict().items():
            current = source[name].detach()
            if value.dtype.is_floating_point:
                value.lerp_(current.to(value.dtype), 1.0 - self.decay)
            else:
                value.copy_(current)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
