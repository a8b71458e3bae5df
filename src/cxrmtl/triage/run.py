"""``cxrmtl triage simulate`` on a run folder: the split's predictions -> study pool -> simulation -> outputs.

Predictions come from ``RUN/eval/<split>/predictions.csv`` when evaluation wrote it (columns image, patient, then
every output: ``<Finding>`` probability, ``<Finding>_positive``, ...), otherwise the run's model predicts the split
through the preprocessing cache (``infer.predictor``). The TRUE labels always come from the data folder's index
(only its metadata is read when the CSV is used). The data folder is ``--data`` or the one the run recorded in
``RUN/data.json`` (``data_root``, optional ``cache_dir``). Outputs go to ``RUN/triage/<split>/``: triage.json,
triage.md, the figure and ``triage_section.json``, which ``cxrmtl evaluate`` adds to the report when present.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cxrmtl import labels as L
from cxrmtl.errors import ConfigError, RunError
from cxrmtl.triage.simulate import SimulationOptions, StudyPool, pool_from_arrays, run_simulation, summary_json
from cxrmtl.triage.urgency import UrgencyConfig, default_urgency_config, finding_temperature, triage_thresholds

log = logging.getLogger(__name__)

DATA_RECORD = "data.json"
TRIAGE_DIR = "triage"
TRIAGE_JSON, TRIAGE_MD, SECTION_JSON = "triage.json", "triage.md", "triage_section.json"
TRIAGE_SCHEMA = 1


def triage_dir(run: Path, split: str) -> Path:
    """RUN/triage/<split>/: where a simulation's outputs go (the report looks for SECTION_JSON there)."""
    return Path(run) / TRIAGE_DIR / split


def recorded_data(run: Path) -> tuple[Path | None, Path | None]:
    """(data_root, cache_dir) recorded in RUN/data.json, relative paths taken from the run folder; (None, None)."""
    path = Path(run) / DATA_RECORD
    if not path.is_file():
        return None, None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise RunError(f"{path}: expected an object with data_root")

    def resolve(key: str) -> Path | None:
        value = doc.get(key)
        return None if not value else (Path(run) / Path(str(value))).resolve()

    return resolve("data_root"), resolve("cache_dir")


def resolve_data_root(run: Path, data_root: Path | None) -> tuple[Path, Path | None]:
    """The data folder to use (``--data`` wins over RUN/data.json) and the recorded cache, if any."""
    recorded_root, recorded_cache = recorded_data(run)
    root = Path(data_root) if data_root is not None else recorded_root
    if root is None:
        raise ConfigError(f"--data: {run} does not record its data folder ({DATA_RECORD}); pass --data ROOT, the "
                          "NIH-layout folder the run was trained on")
    if not root.is_dir():
        raise ConfigError(f"--data: {root} is not a folder")
    return root, recorded_cache


@dataclass(frozen=True)
class SplitPredictions:
    """Finding probabilities of a split on the scale of the run's thresholds (uncalibrated), row-aligned."""

    images: np.ndarray
    rows: np.ndarray  # NIHIndex.table positions
    probabilities: np.ndarray  # (N, K)
    names: tuple[str, ...]
    positive: np.ndarray | None  # (N, K) calls from predictions.csv, when it has them for every finding
    source: str


def read_predictions_csv(path: Path, index: Any, thresholds: Any) -> SplitPredictions | None:
    """Evaluation's predictions.csv mapped onto the index; None (with the reason logged) when it cannot be used."""
    import pandas as pd

    from cxrmtl.eval.calibration import apply_temperature

    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        log.warning("%s: not readable (%s); predicting with the model instead", path, exc)
        return None
    names = tuple(n for n in L.FINDINGS if n in table.columns)
    if "image" not in table.columns or not names:
        log.warning("%s: no image or finding columns; predicting with the model instead", path)
        return None
    pos = {name: i for i, name in enumerate(index.table["image"].to_numpy())}
    rows = np.array([pos.get(str(img), -1) for img in table["image"]], dtype=np.int64)
    if (rows < 0).any():
        missing = str(table["image"].to_numpy()[rows < 0][0])
        raise RunError(f"{path}: image {missing} is not in the data folder's index (wrong --data?)")
    probs = table[list(names)].to_numpy(dtype=np.float64, copy=True)
    if "calibrated" in table.columns and table["calibrated"].astype(str).str.lower().eq("true").any():
        # Temperature-scaled probabilities: map back to the scale the thresholds were chosen on (T is monotone).
        temps = [finding_temperature(thresholds, n) for n in names]
        if any(t is None for t in temps):
            log.warning("%s: calibrated probabilities without the run's temperatures; predicting with the model", path)
            return None
        for k, t in enumerate(temps):
            probs[:, k] = apply_temperature(probs[:, k], 1.0 / t)
    positive = None
    cols = [f"{n}_positive" for n in names]
    if all(c in table.columns for c in cols) and table[cols].notna().all().all():
        positive = table[cols].astype(str).apply(lambda c: c.str.lower().isin(("true", "1", "1.0"))).to_numpy()
    return SplitPredictions(images=table["image"].to_numpy().astype(str), rows=rows, probabilities=probs,
                            names=names, positive=positive, source=str(path))


def predict_with_model(run: Path, index: Any, *, data_root: Path, cache_dir: Path | None, split: str,
                       which: str, device: str, batch_size: int) -> SplitPredictions:
    """Run the model over the split through the run's data and cache (``runs.data.open_run_data``, like evaluate)."""
    from cxrmtl.eval.evaluate import split_outputs
    from cxrmtl.infer.predictor import load_run, predict_split
    from cxrmtl.runs.data import open_run_data

    loaded = load_run(run, which=which, device=device)
    opened = open_run_data(run, data=loaded.config.data, data_root=data_root, cache_dir=cache_dir, progress=False)
    index = opened.index
    preds = predict_split(loaded, opened.cache, index, split, batch_size=batch_size)
    if len(preds) == 0:
        raise RunError(f"split {split}: no readable images of this split in {data_root}")
    findings = split_outputs(preds, loaded.tasks, index.table).findings()
    if findings is None:
        raise RunError(f"{run}: the model predicts no ChestX-ray14 finding; nothing to triage")
    rows = np.asarray(preds.rows)
    return SplitPredictions(images=index.table["image"].to_numpy()[rows].astype(str), rows=rows,
                            probabilities=findings.scores, names=findings.names, positive=None,
                            source=f"{loaded.checkpoint} on {split}")


@dataclass(frozen=True)
class TriageRun:
    """Where a simulation of a run went, its document and the one-line summary."""

    out_dir: Path
    json_path: Path
    markdown_path: Path
    figure_path: Path
    section_path: Path
    doc: dict[str, Any]
    summary: str


def build_pool(run: Path, *, data_root: Path | None, split: str, config: UrgencyConfig,
               cache_dir: Path | None = None, which: str = "best", device: str = "cpu",
               batch_size: int = 64) -> tuple[StudyPool, dict[str, Any]]:
    """The split's study pool (urgency from the run's predictions and thresholds, TRUE labels) and run facts."""
    from cxrmtl.data.nih import load_index
    from cxrmtl.eval.datakind import describe_data
    from cxrmtl.eval.thresholds import load_thresholds
    from cxrmtl.runs.checkpoint import read_run_config

    run = Path(run)
    if split not in L.SPLITS:
        raise ConfigError(f"--split: must be one of {', '.join(L.SPLITS)}, got {split!r}")
    cfg = read_run_config(run)
    root, recorded_cache = resolve_data_root(run, data_root)
    csv = run / "eval" / split / "predictions.csv"
    index = load_index(root, val_fraction=cfg.data.val_fraction, split_seed=cfg.data.split_seed,
                       find_images=not csv.is_file())
    thresholds = load_thresholds(run)
    if thresholds is None:
        log.warning("%s: no thresholds.json (run `cxrmtl evaluate` first): urgency from probabilities only", run)
    preds = read_predictions_csv(csv, index, thresholds) if csv.is_file() else None
    if preds is None:
        if csv.is_file():  # the index was built without looking for image files
            index = load_index(root, val_fraction=cfg.data.val_fraction, split_seed=cfg.data.split_seed)
        preds = predict_with_model(run, index, data_root=root, cache_dir=cache_dir or recorded_cache, split=split,
                                   which=which, device=device, batch_size=batch_size)
    truth = index.findings[preds.rows][:, [L.FINDING_INDEX[n] for n in preds.names]]
    used = triage_thresholds(thresholds, config)
    method = None if thresholds is None else (
        config.threshold_method if config.threshold_method in thresholds.methods else thresholds.default)
    # The CSV's <Finding>_positive calls are at the run's default operating point: usable only when triage uses it.
    positive = preds.positive if thresholds is not None and method == thresholds.default else None
    pool = pool_from_arrays(preds.images, preds.probabilities, preds.names, truth,
                            thresholds=used, config=config, positive=positive)
    kind = describe_data(index, preds.rows, root).kind
    facts = {"run": str(run), "run_name": run.name, "split": split, "data_root": str(root.resolve()),
             "data_kind": kind, "predictions": preds.source,
             "thresholds": None if thresholds is None else {"method": method, "split": thresholds.split}}
    return pool, facts


def simulate_run(
    run: Path,
    *,
    data_root: Path | None = None,
    split: str = "test",
    options: SimulationOptions | None = None,
    config: UrgencyConfig | None = None,
    out: Path | None = None,
    cache_dir: Path | None = None,
    which: str = "best",
    device: str = "cpu",
    batch_size: int = 64,
) -> TriageRun:
    """Simulate the reading room on ``split`` of ``run`` and write RUN/triage/<split>/ (or ``out``)."""
    from cxrmtl.fsio import atomic_write_bytes, atomic_write_text, write_json_atomic
    from cxrmtl.triage import report
    from cxrmtl.version import code_version

    options = options or SimulationOptions()
    config = config or default_urgency_config()
    pool, facts = build_pool(run, data_root=data_root, split=split, config=config, cache_dir=cache_dir,
                             which=which, device=device, batch_size=batch_size)
    result = run_simulation(pool, options)
    doc: dict[str, Any] = {"schema": TRIAGE_SCHEMA, **facts, "code_version": code_version(),
                           "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "urgency_config": config.to_dict(), **summary_json(result, pool)}
    out_dir = Path(out) if out is not None else triage_dir(run, split)
    fig = report.figure(doc)
    figure_path = atomic_write_bytes(out_dir / f"{fig.name}.png", fig.png)
    json_path = write_json_atomic(out_dir / TRIAGE_JSON, doc)
    md_path = atomic_write_text(out_dir / TRIAGE_MD, report.markdown(doc, figure_file=figure_path.name))
    section_path = write_json_atomic(out_dir / SECTION_JSON, report.section(doc, fig).to_json())
    return TriageRun(out_dir=out_dir, json_path=json_path, markdown_path=md_path, figure_path=figure_path,
                     section_path=section_path, doc=doc, summary=report.summary_line(doc))
