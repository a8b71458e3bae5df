"""What data a run was trained on (``RUN/data.json``), and the one way every command opens index + cache for a run.

``train`` records the data root, the cache folder and a fingerprint of the index; ``evaluate``, ``localize``, the
ablation and the demo then call ``open_run_data(run, ...)``, which uses that record when no data is given, refuses a
data folder whose fingerprint differs from the run's (unless asked to on purpose), and never builds a cache
silently: a missing one is built with a log line that says why and a progress bar; a different one is refused.

The fingerprint (``index_fingerprint``) hashes what decides what a model saw and is scored on: the image names
(sorted), each image's split, the 14-finding label matrix, and the split settings (``val_fraction``,
``split_seed``). It does not hash which image files are present, so a fuller download of the same release keeps
its fingerprint (its ``data_kind`` and counts say how much of it there is).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrmtl import labels
from cxrmtl.distributed import DistContext, barrier
from cxrmtl.errors import CacheError, ConfigError, DataLayoutError, RunError
from cxrmtl.fsio import read_json_file, write_json_atomic
from cxrmtl.runs.layout import DATA_FILE
from cxrmtl.version import code_version

if TYPE_CHECKING:
    from cxrmtl.config import DataConfig
    from cxrmtl.data.cache import CacheView
    from cxrmtl.data.nih import NIHIndex

log = logging.getLogger(__name__)

DATA_SCHEMA = 1
# What RUN/data.json says the folder holds. Not the label a number is reported with: evaluate, localize and ablate
# label their numbers with cxrmtl.eval.datakind.describe_data, from the images actually evaluated.
RECORD_KINDS: tuple[str, ...] = ("phantom", "nih", "subset")
MISMATCH_HINT = "pass --allow-data-mismatch to evaluate on it on purpose"


def index_fingerprint(index: NIHIndex, *, val_fraction: float, split_seed: int) -> str:
    """SHA-256 (hex) of the sorted image names, their split, the label matrix and the split settings."""
    names = index.table["image"].to_numpy().astype(str)
    order = np.argsort(names, kind="stable")
    digest = hashlib.sha256(b"cxrmtl index fingerprint v1\0")
    digest.update(json.dumps({"val_fraction": float(val_fraction), "split_seed": int(split_seed)}).encode())
    digest.update(b"\0" + "\n".join(names[order].tolist()).encode("utf-8"))
    digest.update(b"\0" + "\n".join(index.table["split"].to_numpy().astype(str)[order].tolist()).encode("utf-8"))
    digest.update(b"\0" + np.ascontiguousarray(index.findings[order], dtype=np.uint8).tobytes())
    return digest.hexdigest()


def record_kind(index: NIHIndex) -> str:
    """``phantom`` (a phantom marker in the root), ``nih`` (all 112,120 images of the release have files) or
    ``subset``: what the folder holds, for RUN/data.json (see RECORD_KINDS)."""
    if any((Path(index.root) / name).exists() for name in labels.PHANTOM_MARKERS):
        return "phantom"
    with_files = int((index.table["path"].to_numpy().astype(str) != "").sum())
    return "nih" if with_files == labels.NIH_NUM_IMAGES else "subset"


def split_counts(index: NIHIndex) -> dict[str, dict[str, int]]:
    """Per split: ``listed`` (CSV rows), ``images`` (rows whose file exists) and ``patients`` (among those)."""
    table = index.table
    present = table["path"].to_numpy().astype(str) != ""
    split = table["split"].to_numpy()
    patients = table["patient_id"].to_numpy()
    counts = {}
    for name in labels.SPLITS:
        rows = split == name
        counts[name] = {"listed": int(rows.sum()), "images": int((rows & present).sum()),
                        "patients": len(np.unique(patients[rows & present]))}
    return counts


def default_cache_dir(*, data_root: Path, out: Path, size: int) -> Path:
    """Where the preprocessing cache goes without ``--cache``: next to the run folder, keyed by data root and size.

    RUN-adjacent (not ROOT-adjacent) because the data folder may be read-only; runs in the same parent folder on the
    same data and size share it.
    """
    root = Path(data_root).resolve()
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:8]
    return Path(out).resolve().parent / ".cxrmtl-cache" / f"{root.name}-{digest}-s{size}"


# ---------------------------------------------------------------------------------------------------------------
# RUN/data.json


@dataclass(frozen=True)
class DataRecord:
    """The data a run was trained on (or that a command opened): RUN/data.json, schema in docs/architecture.md."""

    data_root: str
    cache_dir: str
    fingerprint: str
    data_kind: str
    image_size: int
    val_fraction: float
    split_seed: int
    splits: dict[str, dict[str, int]]
    code_version: str = ""
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"schema": DATA_SCHEMA, **asdict(self)}

    def same_data(self, other: DataRecord) -> bool:
        """Same index (fingerprint) and the same files and cache, i.e. nothing a command would do differently."""
        keys = ("data_root", "cache_dir", "fingerprint", "data_kind", "image_size", "splits")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


def data_record(index: NIHIndex, *, cache_dir: Path, data: DataConfig, fingerprint: str | None = None) -> DataRecord:
    """The record of ``index`` opened with ``cache_dir`` under the split settings of ``data``."""
    fingerprint = fingerprint or index_fingerprint(index, val_fraction=data.val_fraction, split_seed=data.split_seed)
    return DataRecord(
        data_root=str(Path(index.root).resolve()), cache_dir=str(Path(cache_dir).resolve()), fingerprint=fingerprint,
        data_kind=record_kind(index), image_size=int(data.image_size), val_fraction=float(data.val_fraction),
        split_seed=int(data.split_seed), splits=split_counts(index), code_version=code_version(),
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def write_data_record(run: Path, record: DataRecord) -> Path:
    """Write RUN/data.json atomically; return its path."""
    return write_json_atomic(Path(run) / DATA_FILE, record.to_json())


def read_data_record(run: Path) -> DataRecord | None:
    """RUN/data.json, or None when the run has none (a run trained before runs recorded their data)."""
    path = Path(run) / DATA_FILE
    doc = read_json_file(path, error=RunError)
    if doc is None:
        return None
    if not isinstance(doc, dict) or doc.get("schema") != DATA_SCHEMA:
        raise RunError(f"{path}: expected a JSON object with schema {DATA_SCHEMA}")
    fields = {k: doc.get(k) for k in DataRecord.__dataclass_fields__ if k in doc}
    try:
        record = DataRecord(**fields)
    except TypeError as exc:
        raise RunError(f"{path}: missing fields ({exc})") from None
    if not isinstance(record.fingerprint, str) or not isinstance(record.data_root, str):
        raise RunError(f"{path}: data_root and fingerprint must be strings")
    return record


# ---------------------------------------------------------------------------------------------------------------
# open_run_data: the one index + cache wiring


@dataclass(frozen=True)
class RunData:
    """An index and its cache, opened for a run: ``record`` describes them, ``run_record`` is RUN/data.json."""

    index: NIHIndex
    cache: CacheView
    record: DataRecord
    run_record: DataRecord | None

    @property
    def matches_run(self) -> bool:
        """True unless the run records other data (a run without a record, or no run, matches)."""
        return self.run_record is None or self.run_record.fingerprint == self.record.fingerprint

    def unreadable(self, split: str) -> int:
        """Images of ``split`` whose file exists but whose cache row is bad (the loader skips them)."""
        rows = self.index.rows(split)
        paths = self.index.table["path"].to_numpy().astype(str)[rows]
        names = self.index.table["image"].to_numpy()[rows][paths != ""]
        return int((self.cache.rows_for(names) < 0).sum())


def open_run_data(
    run: Path | None = None,
    *,
    data: DataConfig,
    data_root: Path | None = None,
    cache_dir: Path | None = None,
    allow_data_mismatch: bool = False,
    build_missing_cache: bool = True,
    progress: bool = True,
    ctx: DistContext | None = None,
    mismatch_hint: str = MISMATCH_HINT,
) -> RunData:
    """Open the index and the cache for ``run`` (or for no run: then ``data_root`` and ``cache_dir`` are needed).

    ``data_root`` / ``cache_dir`` default to RUN/data.json. A ``data_root`` whose fingerprint differs from the run's
    raises RunError unless ``allow_data_mismatch``. A missing or interrupted cache is built (rank 0 of ``ctx``; the
    others wait) with a warning saying why, or refused when ``build_missing_cache`` is False; a cache folder holding
    something else (other images, another size) is refused, never rebuilt. ``mismatch_hint`` ends the mismatch error.
    """
    ctx = ctx or DistContext()
    run_record = read_data_record(run) if run is not None else None
    root = _resolve_root(run, data_root, run_record)
    index = _load_index(root, data, recorded=data_root is None and run_record is not None, run=run)
    fingerprint = index_fingerprint(index, val_fraction=data.val_fraction, split_seed=data.split_seed)
    if run_record is not None and fingerprint != run_record.fingerprint:
        if not allow_data_mismatch:
            raise RunError(_mismatch_message(run, root, run_record, given=data_root is not None, hint=mismatch_hint))
        log.warning("%s: not the data %s was trained on (%s); evaluating on it as asked (--allow-data-mismatch)",
                    root, run, run_record.data_root)
    cache_path = _resolve_cache(cache_dir, root, run, run_record, size=data.image_size)
    cache = _open_cache(index, cache_path, data, build=build_missing_cache, progress=progress, ctx=ctx)
    record = data_record(index, cache_dir=cache_path, data=data, fingerprint=fingerprint)
    return RunData(index=index, cache=cache, record=record, run_record=run_record)


def _resolve_root(run: Path | None, data_root: Path | None, run_record: DataRecord | None) -> Path:
    if data_root is not None:
        return Path(data_root).resolve()
    if run_record is not None:
        return Path(run_record.data_root)
    if run is None:
        raise ConfigError("--data: no data folder given")
    raise RunError(f"{Path(run) / DATA_FILE}: missing ({run} was trained before runs recorded their data); "
                   "pass --data with the folder it was trained on")


def _load_index(root: Path, data: DataConfig, *, recorded: bool, run: Path | None) -> NIHIndex:
    from cxrmtl.data.nih import load_index

    try:
        return load_index(root, val_fraction=data.val_fraction, split_seed=data.split_seed)
    except DataLayoutError as exc:
        if recorded:
            raise RunError(f"{root} (recorded in {Path(run or '.') / DATA_FILE}) cannot be read: {exc}; pass --data "
                           "with its new place if it moved") from None
        raise


def _mismatch_message(run: Path | None, root: Path, recorded: DataRecord, *, given: bool, hint: str) -> str:
    if given:
        return (f"--data {root}: its index fingerprint differs from the data {run} was trained on "
                f"({recorded.data_root}); {hint}")
    return (f"{root}: its index (images, splits or labels) changed since {run} was trained on it (the fingerprint in "
            f"{Path(run or '.') / DATA_FILE} differs); {hint}")


def _resolve_cache(cache_dir: Path | None, root: Path, run: Path | None, run_record: DataRecord | None, *,
                   size: int) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).resolve()
    if run_record is not None and Path(run_record.data_root) == root and run_record.image_size == size:
        return Path(run_record.cache_dir)
    if run is None:
        raise ConfigError("--cache: no cache folder given")
    return default_cache_dir(data_root=root, out=Path(run), size=size)


def _open_cache(index: NIHIndex, out: Path, data: DataConfig, *, build: bool, progress: bool,
                ctx: DistContext) -> CacheView:
    from cxrmtl.data.cache import build_cache, cache_status, open_cache

    if ctx.is_main:
        status = cache_status(index, out, size=data.image_size)
        if status.state == "conflict":
            raise CacheError(f"{status.reason}; pass --cache with another folder, or rebuild this one on purpose "
                             f"with `cxrmtl cache build {index.root} {out} --size {data.image_size} --force`")
        if status.state != "ready":
            if not build:
                raise CacheError(f"{status.reason}; build it first: cxrmtl cache build {index.root} {out} "
                                 f"--size {data.image_size}")
            count = int((index.table["path"].to_numpy().astype(str) != "").sum())
            log.warning("%s; building it now: %d images at %d px (each image is decoded once)", status.reason,
                        count, data.image_size)
            build_cache(index, out, size=data.image_size, workers=data.cache_workers or None, progress=progress)
    barrier(ctx)
    return open_cache(out)


def read_data_kind(run: Path) -> str:
    """What the run was trained on: RUN/data.json's "data_kind"; else "phantom" when the data root it names holds
    a phantom marker; else "unknown" (runs made before data.json existed do not record their data).
    Used by predict, export and serve."""
    doc = read_json_file(Path(run) / DATA_FILE, error=RunError)
    if doc is None:
        return "unknown"
    if isinstance(doc, dict) and isinstance(doc.get("data_kind"), str):
        return doc["data_kind"]
    root = doc.get("root") or doc.get("data_root") if isinstance(doc, dict) else None
    if isinstance(root, str) and any((Path(root) / name).is_file() for name in labels.PHANTOM_MARKERS):
        return "phantom"
    return "unknown"
