"""The NIH ChestX-ray14 index: metadata, labels, official split, patient-disjoint validation split and boxes.

``load_index(root)`` reads an NIH-layout folder (the NIH release, the Kaggle mirror or the built-in phantom):

- ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv``, plain or ``.gz`` (first found of
  ``labels.DATA_ENTRY_NAMES``). The 2017 file's empty trailing column is accepted; its impossible ages
  (above ``labels.MAX_PLAUSIBLE_AGE``) become missing and are counted.
- ``train_val_list.txt`` and ``test_list.txt`` (required; a missing final newline is fine). Rows in neither list
  keep split ``labels.UNLISTED_SPLIT`` and are never served; list names absent from the CSV are counted. Both are
  reported by ``cxrmtl data check``, neither is dropped silently.
- images in ``images/`` and/or ``images_*/images`` (optional; ``path`` is ``""`` for a missing image).
- ``BBox_List_2017.csv[.gz]`` (optional) with its odd header; "Infiltrate" becomes "Infiltration".

Validation is carved out of train_val by patient (``val_fraction`` of patients, seeded). A patient found in two
splits raises ``DataLayoutError`` every time an index is built. Everything is vectorised: the full 112,120-row
metadata is indexed in well under 2 s.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrmtl import labels
from cxrmtl.errors import ConfigError, DataLayoutError

# Data_Entry columns by position (the header's bracketed names contain commas, so they split into extra fields).
ENTRY_COLUMNS: tuple[str, ...] = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
ENTRY_TEXT_COLUMNS: tuple[str, ...] = ("Image Index", "Finding Labels", "Patient Gender", "View Position")
# Header spellings seen in copies of the release, mapped to ENTRY_COLUMNS names (torchxrayvision notes that some
# copies of Data_Entry_2017_v2020.csv say "Patient Sex" where the 2017 file says "Patient Gender").
ENTRY_HEADER_ALIASES: dict[str, str] = {"Patient Sex": "Patient Gender"}
BBOX_COLUMNS: tuple[str, ...] = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]")
TABLE_COLUMNS: tuple[str, ...] = (
    "image",
    "patient_id",
    "follow_up",
    "age",
    "sex",
    "view",
    "split",
    "path",
    "orig_width",
    "orig_height",
    "spacing_x",
    "spacing_y",
)
BOX_COLUMNS: tuple[str, ...] = ("image", "finding", "x", "y", "w", "h")
# Ages may carry a DICOM-style unit suffix (PS3.5 "AS": nnnD/W/M/Y; some copies write "058Y"); years per unit.
AGE_UNITS: dict[str, float] = {"": 1.0, "Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}
AGE_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*([YMWDymwd]?)\s*$"
MAX_NAMED = 10  # how many offending names an error message lists


@dataclass(frozen=True)
class LayoutReport:
    """What building the index noticed about the folder (reported by ``cxrmtl data check``, never fatal)."""

    metadata_file: str = ""
    image_dirs: tuple[str, ...] = ()
    images_searched: bool = False
    unlisted: tuple[str, ...] = ()  # CSV images in neither official list (split UNLISTED_SPLIT)
    unknown_list_names: tuple[str, ...] = ()  # names in a split list that the CSV lacks
    duplicate_files: tuple[str, ...] = ()  # image names found in more than one folder (the first folder wins)
    implausible_ages: int = 0  # ages above MAX_PLAUSIBLE_AGE, set to missing
    boxes_file: str = ""


@dataclass(frozen=True)
class NIHIndex:
    """One row per image of Data_Entry, in the CSV's order; see docs/architecture.md for the columns."""

    root: Path
    table: pd.DataFrame
    findings: np.ndarray
    boxes: pd.DataFrame
    layout: LayoutReport = field(default_factory=LayoutReport)

    def __len__(self) -> int:
        return len(self.table)

    def rows(self, split: str) -> np.ndarray:
        """Row numbers (int64, ascending) of ``split`` (train, val, test or unlisted)."""
        known = (*labels.SPLITS, labels.UNLISTED_SPLIT)
        if split not in known:
            raise ConfigError(f"split: unknown split {split!r}; expected one of {', '.join(known)}")
        return np.flatnonzero(self.table["split"].to_numpy() == split).astype(np.int64)

    def targets(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every ``labels.TARGET_NAMES`` entry as (values float32, mask bool); the mask is False where missing."""
        findings = self.findings.astype(np.float32)
        age = self.table["age"].to_numpy(dtype=np.float32)
        sex = self.table["sex"].to_numpy()
        view = self.table["view"].to_numpy()
        age_ok = np.isfinite(age)
        return {
            "findings": (findings, np.ones(findings.shape, dtype=bool)),
            "abnormal": (findings.max(axis=1, initial=0.0), np.ones(len(findings), dtype=bool)),
            "age": (np.where(age_ok, age, 0.0).astype(np.float32), age_ok),
            "sex": ((sex == labels.SEX_CODES["F"]).astype(np.float32), sex != labels.MISSING_CODE),
            "view": ((view == labels.VIEW_CODES["AP"]).astype(np.float32), view != labels.MISSING_CODE),
        }


def load_index(
    root: Path,
    *,
    val_fraction: float = labels.DEFAULT_VAL_FRACTION,
    split_seed: int = labels.DEFAULT_SPLIT_SEED,
    find_images: bool = True,
) -> NIHIndex:
    """Build the index of the NIH-layout folder ``root`` (see the module docstring for what is read and how)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataLayoutError(f"{root}: not a folder (expected an NIH-layout data folder)")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction: must be in [0, 1), got {val_fraction}")
    metadata = _find_first(root, labels.DATA_ENTRY_NAMES, required=True)
    table, findings, implausible = parse_data_entry(metadata)
    split, unlisted, unknown = _assign_splits(root, table, val_fraction=val_fraction, split_seed=split_seed)
    table["split"] = split
    check_patient_disjoint(table)
    dirs: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    table["path"] = ""
    if find_images:
        files, dirs, duplicates = find_image_files(root)
        table["path"] = [files.get(name, "") for name in table["image"].tolist()]
    boxes_file = _find_first(root, labels.BBOX_NAMES, required=False)
    boxes = read_boxes(boxes_file) if boxes_file is not None else _empty_boxes()
    layout = LayoutReport(
        metadata_file=str(metadata),
        image_dirs=dirs,
        images_searched=find_images,
        unlisted=unlisted,
        unknown_list_names=unknown,
        duplicate_files=duplicates,
        implausible_ages=implausible,
        boxes_file=str(boxes_file or ""),
    )
    return NIHIndex(root=root, table=table[list(TABLE_COLUMNS)], findings=findings, boxes=boxes, layout=layout)


# ----------------------------------------------------------------------------------------------------------------
# Data_Entry


def _find_first(root: Path, names: tuple[str, ...], *, required: bool) -> Path | None:
    for name in names:
        if (root / name).is_file():
            return root / name
    if required:
        raise DataLayoutError(f"{root}: no metadata file found; expected one of {', '.join(names)}")
    return None


def _read_csv(path: Path, *, text_columns: tuple[str, ...]) -> pd.DataFrame:
    """Read a CSV; only empty cells are missing; ``text_columns`` stay text ("" when empty), the rest are inferred.

    Numeric columns are parsed by pandas' C parser (fast); a column that fails to parse stays text and the checks
    below name the first bad line. Any read/parse failure is a DataLayoutError.
    """
    try:
        frame = pd.read_csv(
            path,
            dtype=dict.fromkeys([*text_columns, *ENTRY_HEADER_ALIASES], object),
            keep_default_na=False,
            na_values=[""],
            skipinitialspace=True,
        )
    except pd.errors.EmptyDataError:
        raise DataLayoutError(f"{path}: empty file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError, ValueError, zlib.error) as exc:
        raise DataLayoutError(f"{path}: cannot parse CSV: {exc}") from None
    frame = frame.rename(columns=ENTRY_HEADER_ALIASES)
    for column in text_columns:
        if column in frame.columns:
            frame[column] = frame[column].fillna("")
    return frame


def _check_header(path: Path, frame: pd.DataFrame, expected: tuple[str, ...], *, named: int) -> None:
    """The first ``named`` columns must carry the expected names; the rest must exist; extra ones must be empty."""
    columns = [str(c).strip() for c in frame.columns]
    if len(columns) < len(expected) or columns[:named] != list(expected[:named]):
        raise DataLayoutError(
            f"{path}: unexpected header {','.join(columns)!r}; expected it to start with "
            f"{','.join(expected[:named])!r} and have at least {len(expected)} columns"
        )
    for extra in frame.columns[len(expected) :]:
        filled = frame[extra].notna().to_numpy()
        if filled.any():
            row = int(np.argmax(filled))
            raise DataLayoutError(f"{path}: unexpected value in unnamed column {extra!r} at line {row + 2}")


def _bad_row(path: Path, column: str, frame: pd.DataFrame, bad: np.ndarray, problem: str) -> DataLayoutError:
    row = int(np.flatnonzero(bad)[0])
    value = frame.iloc[row][column]
    value = "" if pd.isna(value) else value
    return DataLayoutError(
        f"{path}: column {column!r} line {row + 2}: {value!r} {problem} ({int(bad.sum())} such row(s))"
    )


def _float_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column as float64 (NaN where empty or not a number); fast when pandas already parsed it as numbers."""
    values = frame[column]
    if not pd.api.types.is_numeric_dtype(values):
        values = pd.to_numeric(values.astype(str).str.strip(), errors="coerce")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def _int_column(path: Path, frame: pd.DataFrame, column: str) -> np.ndarray:
    values = _float_column(frame, column)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        raise _bad_row(path, column, frame, bad, "is not an integer")
    return values.astype(np.int64)


def _ages(path: Path, frame: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Ages in years (float32, NaN = missing) and the number of impossible ones turned into NaN."""
    column = frame["Patient Age"]
    if pd.api.types.is_numeric_dtype(column):  # the common case: plain numbers, parsed by the C reader
        years = column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = column.fillna("").astype(str)
        parts = text.str.extract(AGE_PATTERN)
        number = pd.to_numeric(parts[0], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(number) & (text.str.strip() != "").to_numpy()
        if bad.any():
            raise _bad_row(path, "Patient Age", frame, bad, "is not an age (a number, optionally with Y/M/W/D)")
        years = number * parts[1].fillna("").str.upper().map(AGE_UNITS).to_numpy(dtype=np.float64)
    implausible = (years > labels.MAX_PLAUSIBLE_AGE) | (years < 0)
    return np.where(implausible, np.nan, years).astype(np.float32), int(implausible.sum())


def _codes(frame: pd.DataFrame, column: str, codes: dict[str, int]) -> np.ndarray:
    """Map a categorical column through ``codes``; anything else (empty, unknown) becomes MISSING_CODE."""
    positions, uniques = pd.factorize(frame[column].fillna(""))
    table = np.array([codes.get(str(u).strip().upper(), labels.MISSING_CODE) for u in uniques] or [0], dtype=np.int8)
    return table[positions]


def _multi_hot(path: Path, frame: pd.DataFrame) -> np.ndarray:
    """Finding Labels -> (N, 14) uint8 in labels.FINDINGS order, decoding each distinct label string once."""
    codes, uniques = pd.factorize(frame["Finding Labels"], sort=False)
    table = np.zeros((len(uniques), labels.NUM_FINDINGS), dtype=np.uint8)
    for u, text in enumerate(uniques):
        names = [name.strip() for name in str(text).split("|")]
        problem = _label_problem(names)
        if problem:
            bad = codes == u
            raise _bad_row(path, "Finding Labels", frame, bad, problem)
        for name in names:
            if name != labels.NO_FINDING:
                table[u, labels.FINDING_INDEX[labels.LABEL_ALIASES.get(name, name)]] = 1
    return table[codes]


def _label_problem(names: list[str]) -> str:
    unknown = [
        n for n in names if n != labels.NO_FINDING and labels.LABEL_ALIASES.get(n, n) not in labels.FINDING_INDEX
    ]
    if unknown:
        return f"has unknown finding name(s) {unknown}; known: {', '.join(labels.FINDINGS)}, {labels.NO_FINDING}"
    if labels.NO_FINDING in names and len(names) > 1:
        return f"combines {labels.NO_FINDING!r} with findings"
    return ""


def parse_data_entry(path: Path) -> tuple[pd.DataFrame, np.ndarray, int]:
    """Read a Data_Entry CSV into (table without split/path, findings (N,14) uint8, number of impossible ages)."""
    raw = _read_csv(path, text_columns=ENTRY_TEXT_COLUMNS)
    _check_header(path, raw, ENTRY_COLUMNS, named=7)
    raw = raw.iloc[:, : len(ENTRY_COLUMNS)].set_axis(list(ENTRY_COLUMNS), axis=1)
    if len(raw) == 0:
        raise DataLayoutError(f"{path}: no rows")
    image = raw["Image Index"]
    empty = (image == "").to_numpy()
    if empty.any():
        raise _bad_row(path, "Image Index", raw, empty, "is empty")
    duplicated = image.duplicated().to_numpy()
    if duplicated.any():
        raise _bad_row(path, "Image Index", raw, duplicated, "appears more than once")
    age, implausible = _ages(path, raw)
    width = _int_column(path, raw, "OriginalImage[Width")
    height = _int_column(path, raw, "Height]")
    table = pd.DataFrame(
        {
            "image": image.to_numpy(dtype=object),
            "patient_id": _int_column(path, raw, "Patient ID"),
            "follow_up": _int_column(path, raw, "Follow-up #").astype(np.int32),
            "age": age,
            "sex": _codes(raw, "Patient Gender", labels.SEX_CODES),
            "view": _codes(raw, "View Position", labels.VIEW_CODES),
            "orig_width": width,
            "orig_height": height,
            "spacing_x": _float_column(raw, "OriginalImagePixelSpacing[x"),
            "spacing_y": _float_column(raw, "y]"),
        }
    )
    return table, _multi_hot(path, raw), implausible


# ----------------------------------------------------------------------------------------------------------------
# splits


def read_split_list(path: Path) -> list[str]:
    """Image names of an official split list (whitespace-separated; a missing final newline is fine)."""
    if not path.is_file():
        raise DataLayoutError(
            f"{path}: split list not found (the official {labels.TRAIN_VAL_LIST} and {labels.TEST_LIST} are required)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataLayoutError(f"{path}: cannot read split list: {exc}") from None
    return list(dict.fromkeys(text.split()))  # de-duplicated, order kept


def _assign_splits(
    root: Path, table: pd.DataFrame, *, val_fraction: float, split_seed: int
) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Split name per row, the CSV images in neither list, and the list names the CSV lacks (hash joins only)."""
    train_val = read_split_list(root / labels.TRAIN_VAL_LIST)
    test = read_split_list(root / labels.TEST_LIST)
    listed = pd.Index(train_val + test)
    both = listed[listed.duplicated()]
    if len(both):
        raise DataLayoutError(
            f"{root}: {len(both)} image(s) are in both {labels.TRAIN_VAL_LIST} and {labels.TEST_LIST}: "
            f"{', '.join(map(str, both[:MAX_NAMED]))}"
        )
    images = pd.Index(table["image"])
    position = listed.get_indexer(images)  # -1: in neither list
    in_train_val = (position >= 0) & (position < len(train_val))
    in_test = position >= len(train_val)
    split = np.where(in_test, "test", np.where(in_train_val, "train", labels.UNLISTED_SPLIT)).astype(object)
    patients = table["patient_id"].to_numpy()
    val_patients = carve_val_patients(patients[in_train_val], val_fraction, split_seed)
    split[in_train_val & np.isin(patients, val_patients)] = "val"
    unlisted = tuple(images[position < 0])
    unknown = tuple(listed[images.get_indexer(listed) < 0])
    return split, unlisted, unknown


def carve_val_patients(patients: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``round(fraction * #patients)`` distinct patient ids drawn with ``numpy.random.default_rng(seed)``."""
    unique = np.unique(patients)
    count = round(fraction * len(unique))
    if count == 0:
        return unique[:0]
    return np.sort(np.random.default_rng(seed).choice(unique, size=count, replace=False))


def check_patient_disjoint(table: pd.DataFrame) -> None:
    """Raise DataLayoutError naming the patients that appear in more than one of train / val / test."""
    served = table[table["split"].isin(labels.SPLITS)]
    per_patient = served.groupby("patient_id", sort=True)["split"].nunique()
    shared = per_patient.index[per_patient.to_numpy() > 1].to_numpy()
    if len(shared):
        sample = served[served["patient_id"].isin(shared[:MAX_NAMED])]
        named = sample.groupby("patient_id")["split"].unique()
        detail = "; ".join(f"patient {pid}: {'/'.join(sorted(splits))}" for pid, splits in named.items())
        raise DataLayoutError(f"{len(shared)} patient(s) appear in more than one split: {detail}")


# ----------------------------------------------------------------------------------------------------------------
# image files


def find_image_files(root: Path) -> tuple[dict[str, str], tuple[str, ...], tuple[str, ...]]:
    """Map image name -> path over ``images/`` and ``images_*/images`` (in that order; the first folder wins).

    Returns the mapping, the folders searched and the names found in more than one folder.
    """
    dirs = [root / labels.IMAGE_DIR_NAME] if (root / labels.IMAGE_DIR_NAME).is_dir() else []
    dirs += sorted(p for p in root.glob(labels.IMAGE_SUBDIR_GLOB) if p.is_dir())
    files: dict[str, str] = {}
    duplicates: list[str] = []
    for folder in dirs:
        prefix = f"{folder}{os.sep}"
        try:
            names = [entry.name for entry in os.scandir(folder) if not entry.name.startswith(".")]
        except OSError as exc:
            raise DataLayoutError(f"{folder}: cannot list image folder: {exc.strerror or exc}") from None
        for name in names:
            if name in files:
                duplicates.append(name)
            else:
                files[name] = prefix + name
    return files, tuple(str(d) for d in dirs), tuple(duplicates)


# ----------------------------------------------------------------------------------------------------------------
# boxes


def _empty_boxes() -> pd.DataFrame:
    frame = pd.DataFrame({name: pd.Series(dtype=np.float64) for name in BOX_COLUMNS})
    return frame.astype({"image": object, "finding": object})


def read_boxes(path: Path) -> pd.DataFrame:
    """BBox_List_2017.csv[.gz] -> image, finding (canonical, "Infiltrate" mapped), x, y, w, h (float pixels)."""
    raw = _read_csv(path, text_columns=BBOX_COLUMNS[:2])
    _check_header(path, raw, BBOX_COLUMNS, named=2)
    raw = raw.iloc[:, : len(BBOX_COLUMNS)].set_axis(["image", "finding", "x", "y", "w", "h"], axis=1)
    if len(raw) == 0:
        return _empty_boxes()
    finding = raw["finding"].str.strip().replace(labels.LABEL_ALIASES)
    unknown = (~finding.isin(labels.BBOX_FINDINGS)).to_numpy()
    if unknown.any():
        raise _bad_row(path, "finding", raw, unknown, f"is not a box finding ({', '.join(labels.BBOX_FINDINGS)})")
    coords = {c: _float_column(raw, c) for c in ("x", "y", "w", "h")}
    for name, values in coords.items():
        bad = ~np.isfinite(values) | ((values < 0) if name in ("w", "h") else False)
        if np.any(bad):
            raise _bad_row(path, name, raw, np.asarray(bad), "is not a valid box coordinate")
    return pd.DataFrame(
        {"image": raw["image"].str.strip().to_numpy(dtype=object), "finding": finding.to_numpy(dtype=object), **coords}
    )
