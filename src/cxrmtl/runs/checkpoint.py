"""Checkpoints (atomic save, checked load) and ``load_run``: a finished run folder -> model ready for inference.

A checkpoint is a plain dict saved with ``torch.save`` and read with ``weights_only=True`` (no arbitrary pickle):
model, optimizer, scheduler, scaler, EMA and weighting states, RNG states (python, numpy, torch, CUDA), the loop
position (epoch, batch within the epoch, global step), the resolved config, the label map and the code version.
Saving writes a temporary file in the same folder, fsyncs it and renames it over the old one, so a crash at any
moment leaves either the old or the new checkpoint, never half of one. Loading refuses a corrupt, truncated or
mismatched checkpoint with a CheckpointError: a resume never silently starts fresh.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrmtl.config import Config, config_from_yaml_text, to_dict
from cxrmtl.errors import CheckpointError, ConfigError, RunError
from cxrmtl.fsio import fsync_dir
from cxrmtl.runs import layout as rundir
from cxrmtl.runs.operating import Thresholds, load_thresholds

FORMAT_VERSION = 1
REQUIRED_KEYS: tuple[str, ...] = ("format", "model", "config", "labels", "epoch", "batch_in_epoch", "step")
# Config fields a resumed run may change: they do not alter the computation of the steps already taken.
RESUME_MUTABLE: frozenset[str] = frozenset(
    {"train.epochs", "train.max_steps", "train.progress", "train.cpu_threads", "train.early_stop_patience",
     "data.num_workers", "data.cache_workers"}
)


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file + fsync + os.replace + directory fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(dict(state, format=FORMAT_VERSION), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint; a missing, corrupt, truncated or foreign file raises CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors...
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a cxrmtl checkpoint (top level is {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a cxrmtl checkpoint (missing {', '.join(missing)})")
    if state["format"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state['format']!r}, this code reads {FORMAT_VERSION}")
    return state


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and key not in ("weights", "kwargs", "loss_kwargs", "regression_kwargs"):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def check_compatible(state: Mapping[str, Any], cfg: Config, labels: Mapping[str, Sequence[str]], *, path: Path) -> None:
    """Refuse to resume from a checkpoint written for another config or label map (CheckpointError)."""
    saved, current = _flatten(state["config"]), _flatten(to_dict(cfg))
    differ = sorted(k for k in set(saved) | set(current) if k not in RESUME_MUTABLE and saved.get(k) != current.get(k))
    if differ:
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}" for k in differ[:5])
        raise CheckpointError(f"{path}: checkpoint does not match this config ({details})")
    saved_labels = {k: list(v) for k, v in state["labels"].items()}
    if saved_labels != {k: list(v) for k, v in labels.items()}:
        raise CheckpointError(f"{path}: label map {saved_labels} does not match this run's tasks {dict(labels)}")


# ---------------------------------------------------------------------------------------------------------------
# RNG states, stored as tensors and plain values so weights_only loading accepts them


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state((np_state["kind"], keys, np_state["pos"], np_state["has_gauss"], np_state["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ---------------------------------------------------------------------------------------------------------------
# load_run: what evaluation, ablation and the clinical surface call


@dataclass
class LoadedRun:
    """A trained model (eval mode) with everything needed to use it."""

    run: Path
    config: Config
    tasks: list[Any]
    model: torch.nn.Module
    labels: dict[str, list[str]]
    thresholds: Thresholds | None  # RUN/thresholds.json through runs.operating.load_thresholds
    checkpoint: Path
    epoch: int
    step: int
    metrics: dict[str, float]
    device: torch.device


def read_run_config(run: Path) -> Config:
    """The resolved config saved in a run folder (RunError when missing, ConfigError when invalid)."""
    path = Path(run) / rundir.CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{path}: missing; {run} is not a cxrmtl run folder")
    try:
        return config_from_yaml_text(path.read_text(encoding="utf-8"), where=str(path))
    except ConfigError as exc:
        raise RunError(str(exc)) from exc


WHICH_CHECKPOINTS: dict[str, str] = {"best": rundir.BEST_CHECKPOINT, "last": rundir.LAST_CHECKPOINT}


def load_run(run: str | Path, *, which: str = "best", device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model of ``run`` from its config and load ``which`` checkpoint (EMA weights when saved)."""
    from cxrmtl.train.build import build_model, build_tasks_for

    run = Path(run)
    if which not in WHICH_CHECKPOINTS:
        raise RunError(f"which: {which!r} is not one of {', '.join(WHICH_CHECKPOINTS)}")
    cfg = read_run_config(run)
    path = run / rundir.CHECKPOINT_DIR / WHICH_CHECKPOINTS[which]
    state = load_checkpoint(path)
    tasks = build_tasks_for(cfg, pos_weight=None)
    labels = rundir.label_map(tasks)
    check_compatible(state, cfg, labels, path=path)
    model = build_model(cfg, tasks, pretrained=False)
    weights = state.get("ema") or state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model of {run / rundir.CONFIG_FILE} ({exc})") from exc
    model.to(device).eval()
    return LoadedRun(run=run, config=cfg, tasks=tasks, model=model, labels=labels, thresholds=load_thresholds(run),
                     checkpoint=path, epoch=int(state["epoch"]), step=int(state["step"]),
                     metrics=dict(state.get("metrics") or {}), device=torch.device(device))
