"""The run directory: resolved config, label map, code version, metrics log, TensorBoard, checkpoints.

Layout (docs/architecture.md, docs/training.md)::

    RUN/config.yaml      the resolved config (everything needed to rebuild the model)
    RUN/labels.json      task name -> output names (column order of each head)
    RUN/version.json     code version, torch/timm versions, world size, start time
    RUN/log.jsonl        one JSON object per logged event (step records, epoch summaries)
    RUN/tb/              TensorBoard scalars
    RUN/checkpoints/     last.pt (resume), best.pt (selected model)
    RUN/data.json        the data it was trained on: data root, cache folder, index fingerprint, kind, counts
    RUN/label_cut.json   only when trained on reduced labels: which positives were kept (data.labelcut)
    RUN/thresholds.json  written later by evaluation (operating points); read only by eval.thresholds.load_thresholds
    RUN/.run.lock        advisory lock held by the training process (who holds it: pid, host, since)

A folder that already holds a run is never overwritten silently: a fresh start there is refused, ``--resume``
continues it after checking that the saved config matches.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrmtl.config import Config, dump_config
from cxrmtl.errors import RunError
from cxrmtl.fsio import atomic_write_text, format_bytes
from cxrmtl.version import code_version

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.json"
VERSION_FILE = "version.json"
LOG_FILE = "log.jsonl"
TB_DIR = "tb"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
THRESHOLDS_FILE = "thresholds.json"
DATA_FILE = "data.json"
LABEL_CUT_FILE = "label_cut.json"  # only in runs trained on reduced labels (data.rare_positive_fraction < 1)
LOCK_FILE = ".run.lock"


def label_map(tasks: Sequence[Any]) -> dict[str, list[str]]:
    """Task name -> its output names, in head column order."""
    return {task.name: list(task.output_names) for task in tasks}


class RunDir:
    """Paths and writers of one run folder (writers used on rank 0 only)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tb: Any = None

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST_CHECKPOINT

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    def has_run(self) -> bool:
        """True when the folder already holds a run (config or checkpoints)."""
        return (self.path / CONFIG_FILE).is_file() or self.last.is_file()

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    def prepare(self) -> None:
        """Create the run folder (for its lock) or say in one line why it cannot be: a file there, no permission."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path}: exists and is not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"{self.path}: cannot create the run folder ({exc.strerror or exc})") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise RunError(f"{self.path}: not writable")

    def create(self, cfg: Config, tasks: Sequence[Any], *, world_size: int, restart: bool = False) -> None:
        """Start a fresh run here; refuses a folder that already holds one (use resume instead).

        ``restart``: the folder holds a run that was stopped before its first checkpoint; its files are rewritten
        and its log emptied, since none of its steps survived.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path}: exists and is not a directory")
        if self.has_run() and not (restart and not self.last.is_file()):
            raise RunError(f"{self.path}: already holds a run; pass --resume to continue it or choose another --out")
        if restart:
            self.trim_log(max_step=0)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / CONFIG_FILE, dump_config(cfg))
        atomic_write_text(self.path / LABELS_FILE, json.dumps(label_map(tasks), indent=2) + "\n")
        atomic_write_text(self.path / VERSION_FILE, json.dumps(version_info(world_size=world_size), indent=2) + "\n")

    def update_config(self, cfg: Config) -> None:
        """Rewrite config.yaml with the resolved config of a resumed run."""
        atomic_write_text(self.path / CONFIG_FILE, dump_config(cfg))

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to log.jsonl (flushed, so a killed run keeps what it logged)."""
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_jsonable(record), allow_nan=False) + "\n")
            fh.flush()

    def trim_log(self, *, max_step: int) -> None:
        """Drop log lines written after step ``max_step`` (by a killed run, before it is resumed from there)."""
        if not self.log_path.is_file():
            return
        kept = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if int(record.get("step", 0)) <= max_step:
                kept.append(line)
        atomic_write_text(self.log_path, "".join(f"{line}\n" for line in kept))

    def end_record(self, *, step: int) -> dict[str, Any] | None:
        """The ``end`` record of log.jsonl written at ``step`` (a run that finished there), or None."""
        if not self.log_path.is_file():
            return None
        found = None
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("event") == "end" and int(record.get("step", -1)) == step:
                found = record
        return found

    def remove_temp_files(self) -> list[Path]:
        """Delete temporary files of writes killed mid-way (``.NAME.tmp*`` in RUN and RUN/checkpoints); log each.

        Safe only while holding the run lock: then no other process can be writing one.
        """
        removed = []
        for folder in (self.path, self.checkpoints):
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob(".*.tmp*")):
                if not path.is_file():
                    continue
                size = path.stat().st_size
                path.unlink(missing_ok=True)
                log.info("%s: removed %s left by a write that was killed mid-way (%s)", self.path, path.name,
                         format_bytes(size))
                removed.append(path)
        return removed

    def scalars(self, values: Mapping[str, float], *, step: int) -> None:
        """Write scalars to TensorBoard (RUN/tb)."""
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.path / TB_DIR))
        for key, value in values.items():
            if isinstance(value, int | float):
                self._tb.add_scalar(key, value, global_step=step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def version_info(*, world_size: int) -> dict[str, Any]:
    """What produced the run: code version, library versions, world size, start time (UTC)."""
    import timm
    import torch

    return {
        "code_version": code_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "world_size": world_size,
        "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN (an undefined AUROC on a one-class split is logged as null)
    return value
