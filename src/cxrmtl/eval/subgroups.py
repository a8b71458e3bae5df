"""Subgroup AUROC (sex, age band, view) with patient-clustered CIs, and a flag for subgroups that do much worse.

Flag rule: a subgroup is flagged for a finding when the upper end of its 95 % CI lies below the finding's overall
AUROC point estimate on the whole split, i.e. the data are hard to reconcile with the subgroup doing as well as
everyone. Subgroups share the bootstrap draws of the overall estimate (same patients drawn in each resample).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from cxrmtl import labels as L
from cxrmtl.errors import EvaluationError
from cxrmtl.eval.bootstrap import PatientResampler, bootstrap_metric


def _code_groups(column: str, codes: dict[str, int]) -> Callable[[pd.DataFrame], dict[str, np.ndarray]]:
    def groups(meta: pd.DataFrame) -> dict[str, np.ndarray]:
        values = meta[column].to_numpy()
        return {name: values == code for name, code in codes.items()}

    return groups


def _age_groups(meta: pd.DataFrame) -> dict[str, np.ndarray]:
    age = meta["age"].to_numpy(dtype=np.float64)
    return {name: (age >= lo) & (age < hi) for name, lo, hi in L.EVAL_AGE_BANDS}


# Registry: attribute -> (metadata column it needs, function giving a boolean row mask per subgroup).
SUBGROUPS: dict[str, tuple[str, Callable[[pd.DataFrame], dict[str, np.ndarray]]]] = {
    "sex": ("sex", _code_groups("sex", L.SEX_CODES)),
    "age": ("age", _age_groups),
    "view": ("view", _code_groups("view", L.VIEW_CODES)),
}


@dataclass(frozen=True)
class SubgroupRow:
    """AUROC of one finding in one subgroup; None where undefined (no positives or no negatives)."""

    attribute: str
    group: str
    finding: str
    n: int
    n_pos: int
    auroc: float | None
    low: float | None
    high: float | None
    overall: float | None
    flagged: bool

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _opt(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def is_flagged(high: float | None, overall: float | None) -> bool:
    """The documented rule: CI upper bound below the overall point estimate."""
    return high is not None and overall is not None and high < overall


def subgroup_auroc(
    scores: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    metadata: pd.DataFrame,
    *,
    names: Sequence[str],
    resampler: PatientResampler,
    overall: np.ndarray,
    level: float = L.EVAL_CI_LEVEL,
) -> list[SubgroupRow]:
    """One row per (attribute, subgroup, output column); metadata rows align with scores rows."""
    if len(metadata) != scores.shape[0]:
        raise EvaluationError(f"metadata: {len(metadata)} rows for {scores.shape[0]} predictions")
    rows: list[SubgroupRow] = []
    for attribute, (column, split_groups) in SUBGROUPS.items():
        if column not in metadata.columns:
            continue
        for group, members in split_groups(metadata).items():
            idx = np.flatnonzero(members)
            if idx.size == 0:
                continue
            res = bootstrap_metric(
                scores[idx], targets[idx], metric="auroc", mask=mask[idx], resampler=resampler, rows=idx, level=level
            )
            for k, name in enumerate(names):
                keep = mask[idx, k]
                high, ref = _opt(res.high[k]), _opt(overall[k])
                rows.append(
                    SubgroupRow(
                        attribute=attribute,
                        group=group,
                        finding=name,
                        n=int(keep.sum()),
                        n_pos=int(targets[idx, k][keep].sum()),
                        auroc=_opt(res.point[k]),
                        low=_opt(res.low[k]),
                        high=high,
                        overall=ref,
                        flagged=is_flagged(high, ref),
                    )
                )
    return rows
