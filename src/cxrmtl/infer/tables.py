"""predictions.csv: the per-image outputs of an evaluated split, as the CheXNet reimplementations' preds.csv.

One row per image of the split (in index order): ``image``, ``patient_id``, then the columns of
``infer.results.flat_columns``: per finding its probability and ``<finding>_positive``, ``abnormal`` and
``abnormal_positive``, ``age_years``, ``p_female``, ``p_ap``, ``calibrated``. The values are built from the same
model outputs with the same function (``build_results``) and the same RUN/thresholds.json as ``cxrmtl predict``
prints, so predict on an image of the split gives that row's numbers: calibrated probabilities when the run has
validation temperatures (``calibrated`` says which), positive calls at the validation thresholds (empty without).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cxrmtl.fsio import atomic_write_text
from cxrmtl.infer.results import build_results, flat_columns
from cxrmtl.runs.operating import load_thresholds


class _Scores(Protocol):
    scores: np.ndarray


class SplitLike(Protocol):
    """What the writer reads of ``eval.evaluate.SplitOutputs`` (or anything shaped like it)."""

    images: np.ndarray
    patient_ids: np.ndarray
    tasks: Mapping[str, _Scores]


def predictions_table(split: SplitLike, *, tasks: Sequence[Any], run: Path) -> list[dict[str, Any]]:
    """The rows of predictions.csv for a split's outputs of the run's ``tasks`` (RUN/thresholds.json applied)."""
    outputs = {t.name: np.asarray(split.tasks[t.name].scores, dtype=np.float32) for t in tasks}
    results = build_results(outputs, tasks=tasks, operating=load_thresholds(run))
    return [{"image": str(image), "patient_id": int(pid), **flat_columns(result)}
            for image, pid, result in zip(split.images, split.patient_ids, results, strict=True)]


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of dict rows (columns in first-seen order; None -> empty; floats at full float32 precision)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buf.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float
    return value


def write_predictions_csv(path: Path, split: SplitLike, loaded: Any) -> Path:
    """Write predictions.csv of an evaluated split (``loaded``: the run's ``LoadedRun``) atomically."""
    return atomic_write_text(Path(path), rows_to_csv(predictions_table(split, tasks=loaded.tasks, run=loaded.run)))
