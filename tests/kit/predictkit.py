"""Run folders for predict/export tests and bench/bench_predict.py: a model with its initial (random) weights saved
as a real run (config.yaml, labels.json, checkpoints/best.pt), for checks where the weights do not matter (speed,
export parity, preprocessing). Training tiny runs lives in trainkit."""

from __future__ import annotations

from pathlib import Path

import torch

from cxrmtl.config import Config, to_dict
from cxrmtl.runs.checkpoint import save_checkpoint
from cxrmtl.runs.layout import RunDir, label_map
from cxrmtl.train.build import build_model, build_tasks_for


def write_untrained_run(out: Path, cfg: Config, *, seed: int = 0) -> Path:
    """A run folder holding ``cfg``'s network with seeded initial weights as both best.pt and last.pt."""
    tasks = build_tasks_for(cfg, pos_weight=None)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(cfg, tasks, pretrained=False)
    run = RunDir(out)
    run.create(cfg, tasks, world_size=1)
    state = {"model": model.state_dict(), "config": to_dict(cfg), "labels": label_map(tasks), "epoch": 0,
             "batch_in_epoch": 0, "step": 0}
    save_checkpoint(run.best, state)
    save_checkpoint(run.last, state)
    return out
