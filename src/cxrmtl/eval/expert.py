"""Google's expert labels (Majkowska et al., Radiology 2020) for the NIH images they cover.

The file ``google2019_nih-chest-xray-labels.csv.gz`` re-labels 4,376 NIH images (1,962 of the official test list,
2,414 of train_val) for Fracture, Pneumothorax, Airspace opacity and Nodule or mass by a panel of radiologists.
These labels are far less noisy than the text-mined ones, so AUROC against them is the better estimate of what the
model does. Each expert label is scored by the max of the mapped ChestX-ray14 probabilities
(``labels.EVAL_EXPERT_MAP``); Fracture has no counterpart and is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrmtl import labels as L
from cxrmtl.errors import DataLayoutError, EvaluationError
from cxrmtl.eval.bootstrap import PatientResampler, bootstrap_metric

_IMAGE_COLUMN = "Image Index"
_SET_COLUMN = "Set Id"
_YES_NO = {"YES": 1, "NO": 0}


def find_google_labels(data_root: Path | None, explicit: Path | None = None) -> Path | None:
    """The expert-label file: ``explicit`` if given (must exist), else next to or one level above the data root."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise EvaluationError(f"{path}: expert label file not found")
        return path
    if data_root is None:
        return None
    for folder in (Path(data_root), Path(data_root).parent):
        candidate = folder / L.GOOGLE_LABELS_NAME
        if candidate.is_file():
            return candidate
    return None


def load_google_labels(path: Path) -> pd.DataFrame:
    """Columns ``image``, ``set`` and one 0/1 column per expert label in ``labels.EVAL_EXPERT_MAP``."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataLayoutError(f"{path}: cannot read expert labels ({exc})") from exc
    needed = [_IMAGE_COLUMN, *L.EVAL_EXPERT_MAP]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise DataLayoutError(f"{path}: missing column(s) {missing}; found {list(raw.columns)}")
    out = pd.DataFrame({"image": raw[_IMAGE_COLUMN].str.strip()})
    out["set"] = raw[_SET_COLUMN].str.strip() if _SET_COLUMN in raw.columns else ""
    for label in L.EVAL_EXPERT_MAP:
        values = raw[label].str.strip().str.upper()
        bad = ~values.isin(list(_YES_NO))
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            got = raw[label].iloc[first]
            raise DataLayoutError(f"{path}: column {label!r} line {first + 2}: expected YES or NO, got {got!r}")
        out[label] = values.map(_YES_NO).astype(np.int8)
    if out["image"].duplicated().any():
        dup = out["image"][out["image"].duplicated()].iloc[0]
        raise DataLayoutError(f"{path}: image {dup!r} appears more than once")
    return out


@dataclass(frozen=True)
class ExpertRow:
    """AUROC against one expert label on the images of the evaluated split that the file covers."""

    label: str
    findings: tuple[str, ...]
    n: int
    n_pos: int
    auroc: float | None
    low: float | None
    high: float | None

    def to_json(self) -> dict[str, object]:
        doc = asdict(self)
        doc["findings"] = list(self.findings)
        return doc


def _opt(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def expert_auroc(
    images: Sequence[str],
    probs: np.ndarray,
    names: Sequence[str],
    expert: pd.DataFrame,
    *,
    resampler: PatientResampler,
    level: float = L.EVAL_CI_LEVEL,
) -> list[ExpertRow]:
    """AUROC (with patient-clustered CI) of max-combined finding probabilities against each expert label.

    ``images`` and ``probs`` (N, K) describe the evaluated split in the resampler's row order; ``names`` are the K
    finding names of ``probs``. Expert labels whose mapped findings the model does not output are skipped.
    """
    position = {name: k for k, name in enumerate(names)}
    hit = pd.Index(expert["image"]).get_indexer(list(images))
    rows_idx = np.flatnonzero(hit >= 0)
    out: list[ExpertRow] = []
    for label, findings in L.EVAL_EXPERT_MAP.items():
        if rows_idx.size == 0 or any(f not in position for f in findings):
            continue
        score = probs[rows_idx][:, [position[f] for f in findings]].max(axis=1)
        target = expert[label].to_numpy()[hit[rows_idx]]
        res = bootstrap_metric(score, target, metric="auroc", resampler=resampler, rows=rows_idx, level=level)
        out.append(
            ExpertRow(
                label=label,
                findings=tuple(findings),
                n=int(rows_idx.size),
                n_pos=int(target.sum()),
                auroc=_opt(res.point[0]),
                low=_opt(res.low[0]),
                high=_opt(res.high[0]),
            )
        )
    return out
