"""Predictions of a model over loader batches: what validation (train/), evaluation and inference share.

``predict_batches(model, tasks, batches, ...)`` runs a model over loader batches and returns ``Predictions``: row
numbers (NIHIndex.table positions), patient ids and per-task outputs (probabilities, or years for age) with the
matching targets and masks, sorted by row. With a process group (torchrun) every rank predicts its shard and the
shards are gathered by row, dropping the padding duplicates of the distributed eval sampler.
``Predictions.save(path)`` / ``Predictions.load(path)`` use one ``.npz`` file (no pickle).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrmtl.data.loader import normalize
from cxrmtl.distributed import DistContext, gather_by_row
from cxrmtl.errors import RunError

__all__ = ["Predictions", "predict_batches"]

PREDICTIONS_FORMAT = 1


@dataclass(frozen=True)
class Predictions:
    """Per-task outputs on one split, one row per image (sorted by ``rows``)."""

    split: str
    rows: np.ndarray  # int64 (N,), NIHIndex.table positions
    patient_ids: np.ndarray  # int64 (N,)
    outputs: dict[str, np.ndarray]  # task -> (N, out_dim) float32: probabilities, or years for age
    targets: dict[str, np.ndarray]  # task -> (N, out_dim) float32
    masks: dict[str, np.ndarray]  # task -> (N, out_dim) bool
    output_names: dict[str, list[str]]  # task -> column names

    def __len__(self) -> int:
        return len(self.rows)

    def save(self, path: str | Path) -> None:
        """Write one .npz (atomically: temporary file then rename)."""
        path = Path(path)
        meta = {"format": PREDICTIONS_FORMAT, "split": self.split, "output_names": self.output_names}
        arrays: dict[str, np.ndarray] = {"rows": self.rows, "patient_ids": self.patient_ids,
                                         "meta": np.array(json.dumps(meta))}
        for task in self.output_names:
            arrays[f"output/{task}"] = self.outputs[task]
            arrays[f"target/{task}"] = self.targets[task]
            arrays[f"mask/{task}"] = self.masks[task]
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        """Read what ``save`` wrote; a missing or malformed file raises RunError naming it."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                names = {k: list(v) for k, v in meta["output_names"].items()}
                return cls(split=str(meta["split"]), rows=data["rows"], patient_ids=data["patient_ids"],
                           outputs={t: data[f"output/{t}"] for t in names},
                           targets={t: data[f"target/{t}"] for t in names},
                           masks={t: data[f"mask/{t}"] for t in names}, output_names=names)
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise RunError(f"{path}: not a readable predictions file ({type(exc).__name__}: {exc})") from exc


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_batches(
    model: torch.nn.Module,
    tasks: Sequence[Any],
    batches: Iterable[Mapping[str, Any]],
    *,
    device: torch.device,
    mean: float,
    std: float,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    ctx: DistContext | None = None,
    split: str = "",
) -> Predictions:
    """Run ``model`` (put in eval mode, restored after) over loader batches; keep valid samples; gather by row."""
    was_training = model.training
    model.eval()
    rows, pids = [], []
    outs: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    tgts: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    msks: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    try:
        for batch in batches:
            valid = batch["valid"].numpy().astype(bool)
            x = normalize(batch["image"].to(device, non_blocking=True), mean=mean, std=std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp_dtype):
                output = model(x)
            rows.append(batch["row"].numpy()[valid])
            pids.append(batch["patient_id"].numpy()[valid])
            for task in tasks:
                target, mask = task.select(batch["targets"], batch["masks"])
                outs[task.name].append(task.predict(output[task.name].float()).cpu().numpy()[valid])
                tgts[task.name].append(target.numpy()[valid])
                msks[task.name].append(mask.numpy()[valid])
    finally:
        model.train(was_training)
    return _assemble(tasks, rows, pids, outs, tgts, msks, ctx=ctx or DistContext(), split=split)


def _assemble(tasks: Sequence[Any], rows: list, pids: list, outs: dict, tgts: dict, msks: dict, *,
              ctx: DistContext, split: str) -> Predictions:
    def cat(parts: list[np.ndarray], dim: int, dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros((0, dim), dtype=dtype)

    arrays: dict[str, np.ndarray] = {"patient_ids": cat(pids, 0, np.int64).reshape(-1)}
    for task in tasks:
        arrays[f"output/{task.name}"] = cat(outs[task.name], task.out_dim, np.float32)
        arrays[f"target/{task.name}"] = cat(tgts[task.name], task.out_dim, np.float32)
        arrays[f"mask/{task.name}"] = cat(msks[task.name], task.out_dim, bool)
    row_array, arrays = gather_by_row(cat(rows, 0, np.int64).reshape(-1), arrays, ctx)
    names = {t.name: list(t.output_names) for t in tasks}
    return Predictions(split=split, rows=row_array, patient_ids=arrays["patient_ids"],
                       outputs={t: arrays[f"output/{t}"] for t in names},
                       targets={t: arrays[f"target/{t}"] for t in names},
                       masks={t: arrays[f"mask/{t}"] for t in names}, output_names=names)
