"""eval.expert: reading Google's expert labels (the real file and broken ones) and AUROC on the covered images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrmtl import labels as L
from cxrmtl.errors import DataLayoutError, EvaluationError
from cxrmtl.eval.bootstrap import PatientResampler
from cxrmtl.eval.expert import expert_auroc, find_google_labels, load_google_labels

HEADER = "Image Index,Patient ID,Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id"


def test_real_file_has_the_published_counts(nih_file) -> None:
    table = load_google_labels(nih_file(L.GOOGLE_LABELS_NAME))
    assert len(table) == 4376  # Majkowska et al., Radiology 2020: 4,376 images
    assert set(table["set"]) == {"test", "val"}
    test_list = set(nih_file("test_list.txt").read_text().split())
    assert table.loc[table["set"] == "test", "image"].isin(test_list).all()


def test_find_next_to_root_or_explicit(tmp_path: Path) -> None:
    root = tmp_path / "nih"
    root.mkdir()
    assert find_google_labels(root) is None
    (tmp_path / L.GOOGLE_LABELS_NAME).write_text(HEADER + "\n")
    assert find_google_labels(root) == tmp_path / L.GOOGLE_LABELS_NAME
    with pytest.raises(EvaluationError, match="not found"):
        find_google_labels(root, tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Image Index,Pneumothorax\na.png,YES\n", "missing column"),
        (HEADER + "\na.png,1,NO,MAYBE,NO,NO,test\n", "'Pneumothorax' line 2"),
        (HEADER + "\na.png,1,NO,NO,NO,NO,test\na.png,1,NO,NO,NO,NO,test\n", "more than once"),
    ],
)
def test_broken_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(DataLayoutError, match=message):
        load_google_labels(path)


def test_auroc_uses_max_of_mapped_findings_on_covered_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, covered = 300, 200
    images = np.array([f"{i:08d}_000.png" for i in range(n)])
    probs = rng.random((n, len(L.FINDINGS)))
    truth = rng.integers(0, 2, covered)
    lines = [HEADER] + [
        f"{images[i]},{i},NO,{'YES' if truth[i] else 'NO'},NO,{'YES' if i % 3 == 0 else 'NO'},test"
        for i in range(covered)
    ]
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    table = load_google_labels(path)
    resampler = PatientResampler(np.arange(n), n_resamples=50, seed=0)
    rows = {r.label: r for r in expert_auroc(images, probs, L.FINDINGS, table, resampler=resampler)}
    assert set(rows) == set(L.EVAL_EXPERT_MAP)
    nodule = rows["Nodule or mass"]
    score = np.maximum(probs[:covered, L.FINDING_INDEX["Nodule"]], probs[:covered, L.FINDING_INDEX["Mass"]])
    assert nodule.n == covered and nodule.findings == ("Nodule", "Mass")
    assert nodule.auroc == pytest.approx(roc_auc_score(np.arange(covered) % 3 == 0, score))
    assert rows["Airspace opacity"].auroc is None  # all NO: undefined, not a number
    only_ptx = expert_auroc(images, probs[:, [7]], ("Pneumothorax",), table, resampler=resampler)
    assert [r.label for r in only_ptx] == ["Pneumothorax"]
