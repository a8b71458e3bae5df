"""load_index on tiny NIH layouts built here (every variant of the release), and on the real shared metadata."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrmtl import labels
from cxrmtl.data.nih import NIHIndex, carve_val_patients, load_index
from cxrmtl.errors import ConfigError, DataLayoutError

HEADER_2020 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
HEADER_2017 = HEADER_2020 + ","  # the original file has an extra empty trailing column
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"

# (image, labels, follow-up, patient, age, sex, view): 6 patients, 10 images.
ROWS = [
    ("00000001_000.png", "Cardiomegaly", 0, 1, "57", "M", "PA"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, "58", "M", "PA"),
    ("00000002_000.png", "No Finding", 0, 2, "80", "F", "AP"),
    ("00000003_000.png", "Hernia|Effusion|Infiltration", 0, 3, "74", "F", "PA"),
    ("00000003_001.png", "Pleural_Thickening", 1, 3, "75", "F", "AP"),
    ("00000004_000.png", "Mass|Nodule", 0, 4, "33", "M", "PA"),
    ("00000005_000.png", "No Finding", 0, 5, "", "", ""),
    ("00000005_001.png", "Pneumothorax", 1, 5, "41", "F", "AP"),
    ("00000006_000.png", "Atelectasis|Consolidation|Edema|Fibrosis|Pneumonia", 0, 6, "62", "M", "PA"),
    ("00000006_001.png", "No Finding", 1, 6, "63", "M", "PA"),
]
TRAIN_VAL = [r[0] for r in ROWS if r[3] in (1, 2, 3, 4)]
TEST = [r[0] for r in ROWS if r[3] in (5, 6)]


def entry_lines(rows: list[tuple], *, trailing: bool = False) -> list[str]:
    tail = "," if trailing else ""
    return [f"{i},{lab},{f},{p},{a},{s},{v},1024,1024,0.143,0.143{tail}" for i, lab, f, p, a, s, v in rows]


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def make_layout(
    root: Path,
    *,
    rows: list[tuple] = ROWS,
    entry_name: str = "Data_Entry_2017_v2020.csv.gz",
    header: str = HEADER_2020,
    trailing: bool = False,
    train_val: list[str] = TRAIN_VAL,
    test: list[str] = TEST,
    boxes: list[str] | None = None,
    images: dict[str, list[str]] | None = None,
) -> Path:
    """An NIH-layout folder: Data_Entry, split lists without a final newline, optional boxes and image files."""
    write_text(root / entry_name, "\n".join([header, *entry_lines(rows, trailing=trailing)]) + "\n")
    write_text(root / labels.TRAIN_VAL_LIST, "\n".join(train_val))
    write_text(root / labels.TEST_LIST, "\n".join(test))
    if boxes is not None:
        write_text(root / "BBox_List_2017.csv", "\n".join([BBOX_HEADER, *boxes]) + "\n")
    for folder, names in (images or {}).items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / folder / name).write_bytes(b"not decoded by load_index")
    return root


# ----------------------------------------------------------------------------------------------------------------
# the table, labels and targets


def test_table_follows_the_contract(tmp_path: Path) -> None:
    index = load_index(make_layout(tmp_path), val_fraction=0.25, split_seed=3)
    assert isinstance(index, NIHIndex) and len(index) == len(ROWS)
    assert list(index.table.columns) == [
        "image", "patient_id", "follow_up", "age", "sex", "view", "split", "path",
        "orig_width", "orig_height", "spacing_x", "spacing_y",
    ]  # fmt: skip
    table = index.table
    assert table["image"].tolist() == [r[0] for r in ROWS]  # CSV order kept
    assert table["patient_id"].dtype == np.int64 and table["follow_up"].dtype == np.int32
    assert table["age"].dtype == np.float32 and table["sex"].dtype == np.int8 and table["view"].dtype == np.int8
    assert table["sex"].tolist() == [0, 0, 1, 1, 1, 0, -1, 1, 0, 0]
    assert table["view"].tolist() == [0, 0, 1, 0, 1, 0, -1, 1, 0, 0]
    assert np.isnan(table["age"].iloc[6]) and table["age"].iloc[0] == 57
    assert (table["orig_width"] == 1024).all() and np.allclose(table["spacing_x"], 0.143)
    assert index.findings.dtype == np.uint8 and index.findings.shape == (len(ROWS), labels.NUM_FINDINGS)


def test_multi_hot_in_canonical_order(tmp_path: Path) -> None:
    index = load_index(make_layout(tmp_path))
    for row, (_, text, *_rest) in enumerate(ROWS):
        names = [] if text == labels.NO_FINDING else text.split("|")
        expected = np.zeros(labels.NUM_FINDINGS, np.uint8)
        expected[[labels.FINDINGS.index(n) for n in names]] = 1
        np.testing.assert_array_equal(index.findings[row], expected, err_msg=text)


def test_targets_and_masks(tmp_path: Path) -> None:
    targets = load_index(make_layout(tmp_path)).targets()
    assert tuple(targets) == labels.TARGET_NAMES
    for name, (values, mask) in targets.items():
        assert values.dtype == np.float32 and mask.dtype == bool and values.shape == mask.shape, name
    abnormal, _ = targets["abnormal"]
    assert abnormal.tolist() == [1, 1, 0, 1, 1, 1, 0, 1, 1, 0]
    age, age_mask = targets["age"]
    assert age_mask.tolist() == [True] * 6 + [False] + [True] * 3 and age[6] == 0 and age[0] == 57
    sex, sex_mask = targets["sex"]
    assert sex[2] == 1 and sex[0] == 0 and not sex_mask[6]
    view, view_mask = targets["view"]
    assert view[2] == 1 and view[0] == 0 and not view_mask[6]
    assert targets["findings"][1].all()


def test_2017_csv_trailing_column_and_impossible_ages(tmp_path: Path) -> None:
    rows = [list(r) for r in ROWS]
    rows[0][4], rows[1][4], rows[2][4] = "411", "148", "058Y"
    index = load_index(
        make_layout(
            tmp_path, rows=[tuple(r) for r in rows], entry_name="Data_Entry_2017.csv", header=HEADER_2017, trailing=True
        )
    )
    assert index.layout.metadata_file.endswith("Data_Entry_2017.csv")
    assert np.isnan(index.table["age"].iloc[0]) and np.isnan(index.table["age"].iloc[1])
    assert index.table["age"].iloc[2] == 58
    assert index.layout.implausible_ages == 2


def test_age_units(tmp_path: Path) -> None:
    rows = [list(r) for r in ROWS]
    rows[0][4], rows[1][4], rows[2][4] = "006M", "026W", "030D"
    age = load_index(make_layout(tmp_path, rows=[tuple(r) for r in rows])).table["age"].to_numpy()
    np.testing.assert_allclose(age[:3], [0.5, 26 * 7 / 365.25, 30 / 365.25], rtol=1e-6)


@pytest.mark.parametrize("name", labels.DATA_ENTRY_NAMES)
def test_every_metadata_name_gives_the_same_index(tmp_path: Path, name: str) -> None:
    reference = load_index(make_layout(tmp_path / "ref"))
    index = load_index(make_layout(tmp_path / "x", entry_name=name))
    pd.testing.assert_frame_equal(index.table.drop(columns="path"), reference.table.drop(columns="path"))
    np.testing.assert_array_equal(index.findings, reference.findings)


def test_patient_sex_header_spelling(tmp_path: Path) -> None:
    index = load_index(make_layout(tmp_path, header=HEADER_2020.replace("Patient Gender", "Patient Sex")))
    assert index.table["sex"].tolist() == [0, 0, 1, 1, 1, 0, -1, 1, 0, 0]


def test_v2020_preferred_when_both_exist(tmp_path: Path) -> None:
    root = make_layout(tmp_path)
    write_text(root / "Data_Entry_2017.csv", "garbage that would fail to parse\n")
    assert load_index(root).layout.metadata_file.endswith("Data_Entry_2017_v2020.csv.gz")


# ----------------------------------------------------------------------------------------------------------------
# splits


def test_official_split_and_patient_disjoint_val(tmp_path: Path) -> None:
    index = load_index(make_layout(tmp_path), val_fraction=0.25, split_seed=0)
    table = index.table
    assert set(table.loc[table["split"] == "test", "image"]) == set(TEST)
    assert set(table.loc[table["split"].isin(["train", "val"]), "image"]) == set(TRAIN_VAL)
    val_patients = set(table.loc[table["split"] == "val", "patient_id"])
    assert len(val_patients) == 1  # round(0.25 * 4 train_val patients)
    assert not val_patients & set(table.loc[table["split"] == "train", "patient_id"])
    np.testing.assert_array_equal(index.rows("test"), np.flatnonzero(table["split"] == "test"))
    assert index.rows("val").dtype == np.int64


def test_val_split_is_seeded(tmp_path: Path) -> None:
    root = make_layout(tmp_path)
    first = load_index(root, val_fraction=0.5, split_seed=1).table["split"]
    again = load_index(root, val_fraction=0.5, split_seed=1).table["split"]
    pd.testing.assert_series_equal(first, again)
    seeds = {tuple(load_index(root, val_fraction=0.5, split_seed=s).table["split"]) for s in range(8)}
    assert len(seeds) > 1
    assert (load_index(root, val_fraction=0.0).table["split"] != "val").all()


def test_carve_val_patients_fraction() -> None:
    patients = np.repeat(np.arange(1000), 3)
    chosen = carve_val_patients(patients, 0.1, 0)
    assert len(chosen) == 100 and len(np.unique(chosen)) == 100
    np.testing.assert_array_equal(chosen, carve_val_patients(patients[::-1], 0.1, 0))  # order-independent


def test_unlisted_rows_and_unknown_list_names_are_reported(tmp_path: Path) -> None:
    root = make_layout(tmp_path, train_val=[*TRAIN_VAL[:-1], "99999999_000.png"])
    index = load_index(root)
    assert index.layout.unlisted == (TRAIN_VAL[-1],)
    assert index.layout.unknown_list_names == ("99999999_000.png",)
    assert index.table.loc[index.rows(labels.UNLISTED_SPLIT), "image"].tolist() == [TRAIN_VAL[-1]]
    assert len(index) == len(ROWS)  # nothing dropped


def test_lists_with_crlf_and_trailing_newline(tmp_path: Path) -> None:
    root = make_layout(tmp_path)
    write_text(root / labels.TEST_LIST, "\r\n".join(TEST) + "\r\n")
    assert set(load_index(root).table.loc[lambda t: t["split"] == "test", "image"]) == set(TEST)


def test_patient_in_two_splits_is_a_layout_error(tmp_path: Path) -> None:
    root = make_layout(tmp_path, train_val=[*TRAIN_VAL, TEST[0]], test=TEST[1:])  # patient 5 in both
    with pytest.raises(DataLayoutError, match=r"1 patient\(s\) appear in more than one split: patient 5: test/train"):
        load_index(root, val_fraction=0.0)


def test_image_in_both_lists_is_a_layout_error(tmp_path: Path) -> None:
    with pytest.raises(DataLayoutError, match=f"in both.*{TEST[0]}"):
        load_index(make_layout(tmp_path, train_val=[*TRAIN_VAL, TEST[0]]))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_bad_val_fraction(tmp_path: Path, bad: float) -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        load_index(make_layout(tmp_path), val_fraction=bad)


def test_unknown_split_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown split 'validation'"):
        load_index(make_layout(tmp_path)).rows("validation")


# ----------------------------------------------------------------------------------------------------------------
# images


def test_flat_kaggle_and_mixed_image_folders(tmp_path: Path) -> None:
    names = [r[0] for r in ROWS]
    images = {"images": names[:3], "images_001/images": names[3:6], "images_002/images": [*names[6:8], names[0]]}
    index = load_index(make_layout(tmp_path, images=images))
    paths = index.table["path"]
    assert paths.iloc[0] == str(tmp_path.resolve() / "images" / names[0])  # flat folder wins over duplicates
    assert paths.iloc[4] == str(tmp_path.resolve() / "images_001" / "images" / names[4])
    assert paths.iloc[7] == str(tmp_path.resolve() / "images_002" / "images" / names[7])
    assert (paths.iloc[8:] == "").all()  # missing files: empty path
    assert index.layout.duplicate_files == (names[0],)
    assert len(index.layout.image_dirs) == 3


def test_find_images_false_leaves_paths_empty(tmp_path: Path) -> None:
    index = load_index(make_layout(tmp_path, images={"images": [ROWS[0][0]]}), find_images=False)
    assert (index.table["path"] == "").all() and not index.layout.images_searched


# ----------------------------------------------------------------------------------------------------------------
# boxes


def test_boxes_with_odd_header_and_infiltrate(tmp_path: Path) -> None:
    boxes = ["00000003_000.png,Infiltrate,10.5,20,30.25,40", "00000001_000.png,Cardiomegaly,1,2,3,4"]
    index = load_index(make_layout(tmp_path, boxes=boxes))
    assert list(index.boxes.columns) == ["image", "finding", "x", "y", "w", "h"]
    assert index.boxes["finding"].tolist() == ["Infiltration", "Cardiomegaly"]
    assert index.boxes.iloc[0][["x", "y", "w", "h"]].tolist() == [10.5, 20.0, 30.25, 40.0]


def test_no_boxes_file_gives_an_empty_frame(tmp_path: Path) -> None:
    boxes = load_index(make_layout(tmp_path)).boxes
    assert len(boxes) == 0 and list(boxes.columns) == ["image", "finding", "x", "y", "w", "h"]


# ----------------------------------------------------------------------------------------------------------------
# broken layouts: clear DataLayoutError naming the file and the problem


def _rows_with(index: int, column: int, value: str) -> list[tuple]:
    rows = [list(r) for r in ROWS]
    rows[index][column] = value
    return [tuple(r) for r in rows]


BROKEN = {
    "unknown finding": (
        dict(rows=_rows_with(2, 1, "Effusion|Fracture")),
        r"line 4.*unknown finding name\(s\) \['Fracture'\]",
    ),
    "no finding with findings": (dict(rows=_rows_with(2, 1, "No Finding|Mass")), "combines 'No Finding'"),
    "empty labels": (dict(rows=_rows_with(2, 1, "")), "unknown finding"),
    "bad patient id": (dict(rows=_rows_with(3, 3, "p3")), r"'Patient ID' line 5: 'p3' is not an integer"),
    "bad age": (dict(rows=_rows_with(3, 4, "old")), r"'Patient Age' line 5: 'old' is not an age"),
    "duplicate image": (dict(rows=[*ROWS, ROWS[0]]), "appears more than once"),
    "wrong header": (dict(header=HEADER_2020.replace("Patient ID", "PID")), "unexpected header"),
    "bad box finding": (dict(boxes=["00000001_000.png,Fracture,1,2,3,4"]), "not a box finding"),
    "bad box number": (dict(boxes=["00000001_000.png,Mass,1,2,x,4"]), "'w' line 2: 'x' is not a valid box"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_metadata(tmp_path: Path, case: str) -> None:
    kwargs, pattern = BROKEN[case]
    with pytest.raises(DataLayoutError, match=pattern):
        load_index(make_layout(tmp_path, **kwargs))


def test_missing_pieces(tmp_path: Path) -> None:
    with pytest.raises(DataLayoutError, match="not a folder"):
        load_index(tmp_path / "absent")
    root = make_layout(tmp_path / "nolist")
    (root / labels.TEST_LIST).unlink()
    with pytest.raises(DataLayoutError, match=r"test_list\.txt: split list not found"):
        load_index(root)
    root = make_layout(tmp_path / "nocsv")
    (root / "Data_Entry_2017_v2020.csv.gz").unlink()
    with pytest.raises(DataLayoutError, match="no metadata file found"):
        load_index(root)


def test_truncated_gzip_and_empty_csv(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "gz")
    path = root / "Data_Entry_2017_v2020.csv.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataLayoutError, match=r"Data_Entry_2017_v2020\.csv\.gz: cannot parse CSV"):
        load_index(root)
    root = make_layout(tmp_path / "garbled")
    path = root / "Data_Entry_2017_v2020.csv.gz"
    data = bytearray(path.read_bytes())
    data[20:60] = b"\xff" * 40  # corrupt deflate stream
    path.write_bytes(bytes(data))
    with pytest.raises(DataLayoutError, match="cannot parse CSV"):
        load_index(root)
    root = make_layout(tmp_path / "empty", entry_name="Data_Entry_2017.csv")
    (root / "Data_Entry_2017.csv").write_text("")
    with pytest.raises(DataLayoutError, match="empty file"):
        load_index(root)


def test_extra_values_in_trailing_column(tmp_path: Path) -> None:
    root = make_layout(tmp_path, entry_name="Data_Entry_2017.csv", header=HEADER_2017, trailing=True)
    path = root / "Data_Entry_2017.csv"
    lines = path.read_text().splitlines()
    lines[3] += "surprise"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataLayoutError, match=r"unexpected value in unnamed column .* line 4"):
        load_index(root)


# ----------------------------------------------------------------------------------------------------------------
# the real metadata (../shared/data/nih)


@pytest.fixture(scope="module")
def real_index(nih_shared: Path) -> NIHIndex:
    """The index of the real shared NIH folder, built once for this module."""
    return load_index(nih_shared)


def test_real_metadata_counts(real_index: NIHIndex) -> None:
    index = real_index
    table = index.table
    assert len(index) == labels.NIH_NUM_IMAGES
    assert table["patient_id"].nunique() == labels.NIH_NUM_PATIENTS
    for name, rows in (("train_val", table["split"].isin(["train", "val"])), ("test", table["split"] == "test")):
        assert (int(rows.sum()), table.loc[rows, "patient_id"].nunique()) == labels.NIH_SPLIT_COUNTS[name]
    assert not index.layout.unlisted and not index.layout.unknown_list_names
    assert len(index.boxes) == 984 and index.boxes["image"].nunique() == 880  # FACTS.md
    assert set(index.boxes["finding"]) == set(labels.BBOX_FINDINGS)


def test_real_test_split_label_counts(real_index: NIHIndex) -> None:
    """Test-set label counts from FACTS.md: Effusion 4,658, Pneumothorax 2,665, Hernia 86, No Finding 9,861."""
    index = real_index
    test = index.findings[index.rows("test")]
    counts = dict(zip(labels.FINDINGS, test.sum(axis=0).tolist(), strict=True))
    assert (counts["Effusion"], counts["Pneumothorax"], counts["Hernia"]) == (4658, 2665, 86)
    assert int((test.sum(axis=1) == 0).sum()) == 9861


def test_real_images_found(real_index: NIHIndex) -> None:
    index = real_index
    found = index.table["path"] != ""
    assert int(found.sum()) == 225 and (index.table.loc[found, "split"] != "test").all()


@pytest.mark.slow
def test_labels_match_torchxrayvision(real_index: NIHIndex, tmp_path: Path) -> None:
    """Peer check: torchxrayvision's NIH_Dataset (its own packaged csv, all views, every image) gives our labels."""
    import torchxrayvision as xrv

    peer = xrv.datasets.NIH_Dataset(imgpath=str(tmp_path), views=["*"], unique_patients=False)
    assert len(peer) == labels.NIH_NUM_IMAGES
    order = [peer.pathologies.index(name) for name in labels.FINDINGS]
    theirs = pd.DataFrame(peer.labels[:, order].astype(np.uint8), index=peer.csv["Image Index"].to_numpy())
    ours = real_index
    mine = pd.DataFrame(ours.findings, index=ours.table["image"].to_numpy())
    np.testing.assert_array_equal(theirs.loc[mine.index].to_numpy(), mine.to_numpy())
    np.testing.assert_array_equal(
        peer.csv.set_index("Image Index").loc[mine.index, "Patient Age"].to_numpy(), ours.table["age"].to_numpy()
    )
