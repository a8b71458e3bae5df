"""What data a number came from: the one decision every output (evaluate, localize, ablate) labels itself with.

The kind is decided from the images actually evaluated (the rows predicted), not from CSV row counts: a partial NIH
download lists all 112,120 images in its CSV but holds only the archives that finished. Kinds:

- ``phantom``: the data folder carries a phantom marker (``phantom.json``, written by ``cxrmtl phantom``);
- ``nih``: the evaluated images are the complete official test list (25,596 images of 2,797 patients; Wang et al.
  2017, arXiv:1705.02315, and the NIH release's ``test_list.txt``): the only data comparable with published numbers;
- ``subset``: anything else (a partial download, the val split, a hand-made folder); reported with its image and
  patient counts, never next to published numbers as comparable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrmtl import labels as L
from cxrmtl.errors import EvaluationError

PHANTOM_MARKERS: tuple[str, ...] = L.PHANTOM_MARKERS  # files that mark a data folder as a synthetic phantom
DATA_KINDS: tuple[str, ...] = ("auto", "nih", "phantom", "subset")
# The official test list: images and patients (NIH ChestX-ray14 release, test_list.txt).
OFFICIAL_TEST_IMAGES, OFFICIAL_TEST_PATIENTS = L.NIH_SPLIT_COUNTS["test"]


@dataclass(frozen=True)
class DataDescription:
    """The data behind a set of numbers: kind, a human label, counts and the banner to show above them."""

    kind: str  # "nih" | "subset" | "phantom"
    label: str  # e.g. "NIH ChestX-ray14, official test split (25,596 images, 2,797 patients)"
    split: str  # the split of the evaluated images ("test", "val", "train", or "mixed")
    n_images: int
    n_patients: int
    banner: str  # "" when the numbers are comparable with published ones

    @property
    def comparable(self) -> bool:
        """True only for the complete official NIH test split: the one setting papers report on."""
        return self.kind == "nih"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "split": self.split, "n_images": self.n_images,
                "n_patients": self.n_patients, "banner": self.banner, "comparable": self.comparable}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DataDescription:
        return cls(kind=str(doc["kind"]), label=str(doc["label"]), split=str(doc["split"]),
                   n_images=int(doc["n_images"]), n_patients=int(doc["n_patients"]), banner=str(doc["banner"]))


def is_phantom(data_root: Path) -> bool:
    """True when ``data_root`` carries a phantom marker file."""
    return any((Path(data_root) / name).exists() for name in PHANTOM_MARKERS)


def _split_of(index: Any, rows: np.ndarray) -> str:
    splits = np.unique(index.table["split"].to_numpy()[rows])
    return str(splits[0]) if splits.size == 1 else "mixed"


def _is_official_test(index: Any, rows: np.ndarray, split: str, n_patients: int) -> bool:
    """All images of the official test list were evaluated (each once), and nothing else."""
    return (split == "test" and np.unique(rows).size == rows.size == OFFICIAL_TEST_IMAGES
            and n_patients == OFFICIAL_TEST_PATIENTS)


def _counts(n_images: int, n_patients: int) -> str:
    return f"{n_images:,} images, {n_patients:,} patients"


def make_description(kind: str, split: str, n_images: int, n_patients: int) -> DataDescription:
    """The label and banner of ``kind`` for these counts (``describe_data`` decides the kind)."""
    counts = _counts(n_images, n_patients)
    if kind == "phantom":
        return DataDescription(kind, f"PHANTOM (synthetic images), {split} split ({counts})", split, n_images,
                               n_patients, f"PHANTOM DATA ({counts}, {split} split): synthetic images, not comparable "
                                           "to published numbers")
    if kind == "nih":
        return DataDescription(kind, f"NIH ChestX-ray14, official test split ({counts})", split, n_images,
                               n_patients, "")
    what = "of the official test split" if split == "test" else f"of the {split} split"
    return DataDescription(
        kind, f"NIH-layout subset, {split} split ({counts})", split, n_images, n_patients,
        f"SUBSET: {counts} {what}, not the complete official NIH test split ({OFFICIAL_TEST_IMAGES:,} images, "
        f"{OFFICIAL_TEST_PATIENTS:,} patients): not comparable to published numbers")


def describe_data(index: Any, rows: np.ndarray, data_root: Path, *, kind: str = "auto") -> DataDescription:
    """Describe the images at ``rows`` of ``index`` (the rows actually predicted) from the folder ``data_root``.

    ``kind`` other than "auto" labels the data by hand, but only more cautiously than detection: a folder with a
    phantom marker is always "phantom"; "phantom" and "subset" are accepted for any other folder; "nih" only when
    the rows are the complete official test split (EvaluationError otherwise: a partial download is never reported
    as the official split).
    """
    if kind not in DATA_KINDS:
        raise EvaluationError(f"data kind: must be one of {', '.join(DATA_KINDS)}, got {kind!r}")
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise EvaluationError(f"{data_root}: no images were evaluated, so there is no data to describe")
    split = _split_of(index, rows)
    n_patients = int(np.unique(index.table["patient_id"].to_numpy()[rows]).size)
    if is_phantom(data_root):
        detected = "phantom"
    else:
        detected = "nih" if _is_official_test(index, rows, split, n_patients) else "subset"
    if kind == "nih" and detected != "nih":
        raise EvaluationError(
            f"data kind: nih means the complete official test split ({OFFICIAL_TEST_IMAGES:,} images), but "
            f"{data_root} gave {_counts(rows.size, n_patients)} of the {split} split"
            + (" and is a phantom" if detected == "phantom" else ""))
    # A phantom stays a phantom whatever the caller says; otherwise a hand-given kind may only be more cautious.
    chosen = detected if kind == "auto" or detected == "phantom" else kind
    return make_description(chosen, split, int(rows.size), n_patients)
