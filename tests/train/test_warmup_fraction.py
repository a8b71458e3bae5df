"""optim.warmup_fraction: the warm-up scales with the run's length (issue 11) and is validated."""

from __future__ import annotations

import itertools

import pytest
import torch

from cxrmtl.config import OptimConfig, load_config
from cxrmtl.demo import CONFIG_DIR
from cxrmtl.errors import ConfigError
from cxrmtl.train.optim import build_scheduler


def _lrs(cfg: OptimConfig, total: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, total_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_fraction_sets_the_warmup_length_and_overrides_warmup_steps() -> None:
    lrs = _lrs(OptimConfig(lr=1.0, warmup_fraction=0.2, warmup_steps=7, min_lr_ratio=0.0), total=20)
    peak = lrs.index(max(lrs))
    assert peak == 4  # round(0.2 * 20) = 4 warm-up steps, then the cosine starts at the full lr
    assert lrs[:4] == pytest.approx([1 / 5, 2 / 5, 3 / 5, 4 / 5]) and lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))  # then only down
    doubled = _lrs(OptimConfig(lr=1.0, warmup_fraction=0.2, min_lr_ratio=0.0), total=40)
    assert doubled.index(max(doubled)) == 8  # twice the run, twice the warm-up
    fixed = _lrs(OptimConfig(lr=1.0, warmup_steps=7, min_lr_ratio=0.0), total=20)
    assert fixed.index(max(fixed)) == 7  # fraction 0: warmup_steps as before


def test_warmup_fraction_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"optim\.warmup_fraction"):
        load_config(CONFIG_DIR / "demo_phantom.yaml", ["optim.warmup_fraction=1.0"])
    cfg = load_config(CONFIG_DIR / "demo_phantom.yaml")
    assert cfg.optim.warmup_fraction == 0.2 and cfg.weighting.weights["age"] == 0.1
