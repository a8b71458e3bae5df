"""eval.datakind: the data kind comes from the images evaluated, never from CSV row counts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrmtl import labels as L
from cxrmtl.errors import EvaluationError
from cxrmtl.eval.datakind import DataDescription, describe_data

N_TEST, N_TEST_PATIENTS = L.NIH_SPLIT_COUNTS["test"]


@dataclass
class _Index:
    """The two columns describe_data reads from an NIHIndex table."""

    table: pd.DataFrame


def _release(n_train: int = 1000) -> _Index:
    """A full-release-shaped index: the official test list (25,596 images, 2,797 patients) after some train rows."""
    test_patients = np.arange(N_TEST) % N_TEST_PATIENTS
    table = pd.DataFrame({
        "image": [f"{k:08d}_000.png" for k in range(n_train + N_TEST)],
        "patient_id": np.concatenate([100_000 + np.arange(n_train), test_patients]),
        "split": ["train"] * n_train + ["test"] * N_TEST,
    })
    return _Index(table)


def _test_rows(index: _Index) -> np.ndarray:
    return np.flatnonzero(index.table["split"].to_numpy() == "test")


def test_complete_official_test_split_is_nih_and_comparable(tmp_path: Path) -> None:
    index = _release()
    data = describe_data(index, _test_rows(index), tmp_path)
    assert (data.kind, data.n_images, data.n_patients, data.split) == ("nih", N_TEST, N_TEST_PATIENTS, "test")
    assert data.comparable and data.banner == ""
    assert data.label == "NIH ChestX-ray14, official test split (25,596 images, 2,797 patients)"


def test_partial_download_is_a_subset_with_counts_even_if_the_csv_is_complete(tmp_path: Path) -> None:
    """The CSV lists every image (as in a partial download), but only some test images were predicted."""
    index = _release()
    rows = _test_rows(index)[: N_TEST - 2500]  # one archive's worth missing
    data = describe_data(index, rows, tmp_path)
    assert data.kind == "subset" and not data.comparable
    assert data.n_images == N_TEST - 2500 and "23,096 images" in data.banner and "patients" in data.banner
    assert "not comparable to published numbers" in data.banner
    assert data.label.startswith("NIH-layout subset, test split (23,096 images, ")


def test_val_split_of_the_full_release_is_not_the_official_split(tmp_path: Path) -> None:
    index = _release()
    index.table.loc[: 999, "split"] = "val"
    data = describe_data(index, np.arange(1000), tmp_path)
    assert data.kind == "subset" and data.split == "val" and "of the val split" in data.banner


def test_phantom_marker_wins_over_counts_and_over_a_hand_given_kind(tmp_path: Path) -> None:
    index = _release()
    (tmp_path / "phantom.json").write_text("{}")
    data = describe_data(index, _test_rows(index), tmp_path)
    assert data.kind == "phantom" and data.banner.startswith("PHANTOM DATA") and not data.comparable
    assert describe_data(index, _test_rows(index), tmp_path, kind="subset").kind == "phantom"


def test_a_hand_given_kind_may_only_be_more_cautious(tmp_path: Path) -> None:
    index = _release()
    full, part = _test_rows(index), _test_rows(index)[:100]
    assert describe_data(index, full, tmp_path, kind="subset").kind == "subset"
    assert describe_data(index, full, tmp_path, kind="phantom").kind == "phantom"
    assert describe_data(index, full, tmp_path, kind="nih").kind == "nih"
    with pytest.raises(EvaluationError, match="complete official test split"):
        describe_data(index, part, tmp_path, kind="nih")
    with pytest.raises(EvaluationError, match="data kind"):
        describe_data(index, full, tmp_path, kind="real")
    with pytest.raises(EvaluationError, match="no images"):
        describe_data(index, np.array([], dtype=np.int64), tmp_path)


def test_description_round_trips_through_json(tmp_path: Path) -> None:
    index = _release()
    data = describe_data(index, _test_rows(index)[:10], tmp_path)
    assert DataDescription.from_json(data.to_json()) == data
    assert data.to_json()["comparable"] is False
