"""Checkpoints (atomic save, checked load) and ``load_run``: a finished run folder -> model ready for inference.

A checkpoint is a plain dict saved with ``torch.save`` and read with ``weights_only=True`` (no arbitrary pickle):
model, optimizer, scheduler, scaler, EMA and weighting states, the loop position (epoch, batch within the epoch,
global step), the resolved config, the label map and the code version. No RNG state: every random draw of a step
comes from generators seeded by (seed, step, rank) (train/process.py), so a resume needs none and changes none.
Saving writes a temporary file in the same folder, fsyncs it and renames it over the old one, so a crash at any
moment leaves either the old or the new checkpoint, never half of one. Loading refuses a corrupt, truncated or
mismatched checkpoint with a CheckpointError: a resume never silently starts fresh.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cxrmtl.config import Config, config_from_yaml_text, read_config_text, to_dict
from cxrmtl.errors import CheckpointError, ConfigError, RunError
from cxrmtl.fsio import format_bytes, free_space_note, fsync_dir
from cxrmtl.runs import layout as rundir
from cxrmtl.runs.operating import Thresholds, load_thresholds

FORMAT_VERSION = 1
REQUIRED_KEYS: tuple[str, ...] = ("format", "model", "config", "labels", "epoch", "batch_in_epoch", "step")
# Config fields a resumed run may change: they do not alter the computation of the steps already taken.
RESUME_MUTABLE: frozenset[str] = frozenset(
    {"train.epochs", "train.max_steps", "train.progress", "train.cpu_threads", "train.early_stop_patience",
     "train.checkpoint_every", "train.checkpoint_minutes", "data.num_workers", "data.cache_workers",
     "model.allow_random_init", "train.log_every", "train.grad_norm_every"}
)


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file + fsync + os.replace + directory fsync).

    A failed write (full disk, I/O error) removes its temporary file, leaves the previous checkpoint as it was and
    raises CheckpointError saying what was needed and what was free.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # RunDir.remove_temp_files clears one a kill left
    try:
        with open(tmp, "wb") as fh:
            _write_state(fh, dict(state, format=FORMAT_VERSION))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise CheckpointError(_write_failure(path, state, exc)) from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _write_state(fh: Any, state: dict[str, Any]) -> None:
    """``torch.save`` into ``fh``, re-raising the OSError of a failed write (a full disk) as itself: torch's zip
    writer finalises the archive in ``__exit__`` even after a write failed, and its "unexpected pos" RuntimeError
    then replaces the OSError that says what happened."""
    sink = _WriteErrors(fh)
    try:
        torch.save(state, sink)
    except RuntimeError:
        if sink.error is not None:
            raise sink.error from None
        raise


class _WriteErrors:
    """A file-like wrapper that remembers the first OSError its ``write`` raised."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def state_nbytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint state: what its file needs, give or take the pickle framing."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, Mapping):
        return sum(state_nbytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(state_nbytes(v) for v in state)
    return 0


def _write_failure(path: Path, state: Mapping[str, Any], exc: OSError) -> str:
    kept = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{path}: no space left on device while saving the checkpoint (needs about "
                f"{format_bytes(state_nbytes(state))}){free_space_note(path)}; {kept}; free some space and resume "
                "with --resume")
    return f"{path}: cannot write the checkpoint ({exc.strerror or exc}); {kept}"


def _load_failure(exc: Exception) -> str:
    """torch.load's reason in one short line: its texts run to 6-8 lines and advise ``weights_only=False``,
    which is wrong for a damaged file and unsafe for a foreign one, so keep only the specific part."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0].split(". ", 1)[0].rstrip(".") if lines else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint; a missing, corrupt, truncated or foreign file raises CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors...
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({_load_failure(exc)})") from exc
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
    # A field added to Config after the checkpoint was written takes its default, which is what the code that wrote
    # the checkpoint did (new fields default to the old behaviour): older runs stay loadable and resumable.
    defaults = _flatten(to_dict(Config()))
    saved.update({k: defaults[k] for k in current if k not in saved and k in defaults})
    differ = sorted(k for k in set(saved) | set(current) if k not in RESUME_MUTABLE and saved.get(k) != current.get(k))
    if differ:
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}" for k in differ[:5])
        raise CheckpointError(f"{path}: checkpoint does not match this config ({details})")
    saved_labels = {k: list(v) for k, v in state["labels"].items()}
    if saved_labels != {k: list(v) for k, v in labels.items()}:
        raise CheckpointError(f"{path}: label map {saved_labels} does not match this run's tasks {dict(labels)}")


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
        return config_from_yaml_text(read_config_text(path), where=str(path))
    except ConfigError as exc:
        raise RunError(str(exc)) from exc


WHICH_CHECKPOINTS: dict[str, str] = {"best": rundir.BEST_CHECKPOINT, "last": rundir.LAST_CHECKPOINT}


def load_run(run: str | Path, *, which: str = "best", device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model of ``run`` from its config and load ``which`` checkpoint (EMA weights when saved)."""
    from cxrmtl.runs.build import build_model, build_tasks_for

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
    return LoadedRun(run=run, config=cfg, tasks=tasks, model=model, labels=labels,
                     checkpoint=path, epoch=int(state["epoch"]), step=int(state["step"]),
                     metrics=dict(state.get("metrics") or {}), device=torch.device(device))
