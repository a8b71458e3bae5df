"""Fewer positive training labels for chosen findings: the data-efficiency condition of the ablation.

``cut_positives`` keeps exactly ``round(fraction x P)`` (half up, at least 1) of the P positive labels of each chosen
finding among the samples it is given and **masks** the others: they become unlabelled (every task ignores a masked
entry), not negative, so the condition is label scarcity, not label noise. The choice is per image (not per patient:
a kept count can then be exact), drawn with numpy's Generator seeded by (seed, finding index), so every arm trained
with the same seed sees the same labels, whatever other findings are cut, and another seed draws another subset.

The ``abnormal`` target is the OR of the 14 findings. An image whose only positive finding lost its label would still
say "abnormal" and hand the hidden positive to a multitask model through its abnormal head, so its abnormal label is
masked too: with the other findings negative and one unknown, whether the image is abnormal is unknown.

Only the training loader applies a cut (``train.loop``); validation and test labels are never touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cxrmtl import labels
from cxrmtl.config import DataConfig, check_rare_positive_cut

# Stream tag mixed into the seed, so the cut's draws never coincide with another use of the same run seed.
_SALT = 0x1ABE1C07
RECORD_SCHEMA = 1


@dataclass(frozen=True)
class LabelCut:
    """Keep ``fraction`` of the positive labels of ``findings`` (seeded by ``seed``); validated on creation."""

    findings: tuple[str, ...]
    fraction: float
    seed: int

    def __post_init__(self) -> None:
        check_rare_positive_cut(self.findings, self.fraction)

    @classmethod
    def from_config(cls, data: DataConfig, *, seed: int) -> LabelCut | None:
        """The cut ``data`` asks for (``rare_positive_fraction`` < 1), or None when every label is kept."""
        if data.rare_positive_fraction >= 1.0:
            return None
        return cls(findings=tuple(data.rare_findings), fraction=float(data.rare_positive_fraction), seed=int(seed))


@dataclass(frozen=True)
class CutCount:
    """What the cut did to one finding: its positive labels before, how many kept, and which index rows kept them."""

    finding: str
    positives: int
    kept: int
    kept_rows: tuple[int, ...]


def kept_count(positives: int, fraction: float) -> int:
    """``round(fraction x positives)`` half up, at least 1 when there is a positive (a finding never vanishes)."""
    if positives <= 0:
        return 0
    return min(positives, max(1, math.floor(fraction * positives + 0.5)))


def cut_positives(
    targets: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray], index_rows: np.ndarray, cut: LabelCut
) -> tuple[dict[str, np.ndarray], tuple[CutCount, ...]]:
    """New masks with the dropped positives of ``cut.findings`` unlabelled (and ``abnormal`` where it hinged on them).

    ``targets`` / ``masks``: the loader's per-sample arrays (``findings`` (N, 14), ``abnormal`` (N,)); ``index_rows``:
    each sample's NIHIndex row, recorded for the kept positives. The inputs are not modified.
    """
    findings_mask = np.array(masks["findings"], dtype=bool, copy=True)
    positive = (np.asarray(targets["findings"]) > 0.5) & findings_mask
    counts = []
    for name in cut.findings:
        col = labels.FINDING_INDEX[name]
        where = np.flatnonzero(positive[:, col])
        keep = kept_count(where.size, cut.fraction)
        rng = np.random.default_rng([_SALT, int(cut.seed), col])
        kept = np.sort(rng.choice(where, size=keep, replace=False)) if keep else where[:0]
        findings_mask[np.setdiff1d(where, kept), col] = False
        counts.append(CutCount(finding=name, positives=int(where.size), kept=int(keep),
                               kept_rows=tuple(int(r) for r in np.asarray(index_rows)[kept])))
    out = {name: np.array(m, dtype=bool, copy=True) for name, m in masks.items()}
    out["findings"] = findings_mask
    if "abnormal" in out:
        known_positive = (positive & findings_mask).any(axis=1)
        newly_unknown = (np.asarray(masks["findings"], dtype=bool) & ~findings_mask).any(axis=1)
        out["abnormal"] &= known_positive | ~newly_unknown
    return out, tuple(counts)


def cut_record(cut: LabelCut, counts: tuple[CutCount, ...], *, image_names: np.ndarray, split: str) -> dict:
    """The JSON document a run keeps (RUN/label_cut.json): what was cut, how many kept, which images kept them."""
    return {
        "schema": RECORD_SCHEMA,
        "split": split,
        "fraction": cut.fraction,
        "seed": cut.seed,
        "unit": "image",
        "masked_not_negative": True,
        "findings": {
            c.finding: {"positives": c.positives, "kept": c.kept,
                        "kept_images": [str(image_names[r]) for r in c.kept_rows]}
            for c in counts
        },
    }


def describe_counts(counts: tuple[CutCount, ...]) -> str:
    """``Hernia 9/85, Edema 8/80`` (kept / positives) for log lines."""
    return ", ".join(f"{c.finding} {c.kept}/{c.positives}" for c in counts)
