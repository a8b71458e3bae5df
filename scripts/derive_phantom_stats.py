"""Derive the phantom's statistics table from the real NIH metadata (run once; only the numbers are committed).

Usage: python scripts/derive_phantom_stats.py [DATA_ENTRY_CSV(.gz)] [OUT_JSON]
Defaults: ../shared/data/nih/Data_Entry_2017_v2020.csv.gz -> src/cxrmtl/resources/phantom_stats.json.

The table holds aggregate counts only (no image names, no patient rows): label-combination counts (keeps the
co-occurrence structure), per-finding prevalence, pairwise co-occurrence, images-per-patient histogram, age
histograms by sex, P(AP) by the patient's number of studies, and the common (width, height, spacing) triples.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cxrmtl.labels import FINDINGS, NO_FINDING

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO.parent / "shared" / "data" / "nih" / "Data_Entry_2017_v2020.csv.gz"
DEFAULT_OUT = REPO / "src" / "cxrmtl" / "resources" / "phantom_stats.json"
# Buckets of "studies per patient" for P(AP): inpatients with many studies are mostly portable AP films.
STUDY_BUCKETS: tuple[int, ...] = (1, 2, 3, 5, 10, 20, 50, 1000)
AGE_MAX = 100  # v2020 ages run 0..95; the histogram has one bin per year up to this bound.
TOP_GEOMETRIES = 24


def _canonical_combo(labels: str) -> str:
    parts = sorted(p for p in labels.split("|") if p and p != NO_FINDING)
    return "|".join(p for p in FINDINGS if p in parts)


def derive(table: pd.DataFrame) -> dict:
    """Aggregate statistics of one Data_Entry table (see module docstring)."""
    header = list(table.columns)
    combos = table["Finding Labels"].map(_canonical_combo).value_counts()
    multi_hot = np.array([[f in c.split("|") for f in FINDINGS] for c in table["Finding Labels"].map(_canonical_combo)])
    n = len(table)
    per_patient = table.groupby("Patient ID").size()
    studies = table["Patient ID"].map(per_patient).to_numpy()
    bucket = np.searchsorted(np.array(STUDY_BUCKETS), studies, side="left")
    is_ap = (table["View Position"] == "AP").to_numpy()
    ap_by_bucket = [float(is_ap[bucket == b].mean()) if (bucket == b).any() else 0.0 for b in range(len(STUDY_BUCKETS))]
    first = table.sort_values("Follow-up #").groupby("Patient ID").first()
    ages = {}
    for sex in ("M", "F"):
        a = first.loc[first["Patient Gender"] == sex, "Patient Age"].clip(0, AGE_MAX)
        ages[sex] = np.bincount(a.astype(int), minlength=AGE_MAX + 1).tolist()
    w_cols = [c for c in header if c.startswith("OriginalImage[")] + [header[header.index("OriginalImage[Width") + 1]]
    sp_cols = [c for c in header if c.startswith("OriginalImagePixelSpacing")]
    sp_cols = [*sp_cols, header[header.index(sp_cols[0]) + 1]]
    geo = table[w_cols + sp_cols].value_counts().head(TOP_GEOMETRIES)
    years_between = (
        table.sort_values(["Patient ID", "Follow-up #"])
        .groupby("Patient ID")["Patient Age"]
        .agg(lambda s: float(s.max() - s.min()) / max(len(s) - 1, 1))
    )
    return {
        "source": "Data_Entry_2017_v2020.csv (NIH ChestX-ray14, 112,120 images) via scripts/derive_phantom_stats.py",
        "header": header,
        "num_images": int(n),
        "num_patients": int(per_patient.size),
        "findings": list(FINDINGS),
        "prevalence": dict(zip(FINDINGS, multi_hot.mean(axis=0).round(6).tolist(), strict=True)),
        "cooccurrence": (multi_hot.T.astype(np.int64) @ multi_hot.astype(np.int64)).tolist(),
        "combos": {k: int(v) for k, v in combos.items()},
        "images_per_patient": {int(k): int(v) for k, v in per_patient.value_counts().sort_index().items()},
        "male_share": float((first["Patient Gender"] == "M").mean()),
        "age_hist_first_study": ages,
        "mean_years_between_studies": float(years_between[per_patient > 1].mean()),
        "ap_share_by_studies": {"bucket_upper": list(STUDY_BUCKETS), "ap_share": ap_by_bucket},
        "ap_share": float(is_ap.mean()),
        "geometries": [[*map(float, k), int(v)] for k, v in geo.items()],
        "test_image_share": 25_596 / 112_120,  # FACTS.md: official split 86,524 / 25,596
    }


def main(argv: list[str]) -> None:
    src = Path(argv[0]) if argv else DEFAULT_CSV
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    table = pd.read_csv(src)
    stats = derive(table)
    out.write_text(json.dumps(stats, indent=1) + "\n")
    print(f"wrote {out} ({len(stats['combos'])} label combinations, {stats['num_images']} images)")


if __name__ == "__main__":
    main(sys.argv[1:])
