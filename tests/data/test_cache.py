"""Tests of data/cache.py: preprocessing, build, resume journal, no-op rerun, refusals, verify, open_cache."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrmtl.data.cache import (
    IMAGES_FILE,
    JOURNAL_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    NAMES_FILE,
    PLAN_FILE,
    _journal_line,
    _read_journal,
    build_cache,
    open_cache,
    preprocess,
    square_crop_box,
    verify_cache,
)
from cxrmtl.data.imageio import read_gray
from cxrmtl.data.nih import load_index
from cxrmtl.errors import CacheError

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)


def write_tiny_nih(root: Path, n: int, *, side: int = 40, missing: tuple[int, ...] = (), corrupt: tuple[int, ...] = (),
                   wide: tuple[int, ...] = (), sixteen: tuple[int, ...] = ()) -> list[str]:
    """A tiny NIH-layout folder: n images of distinct content, one patient per two images, test = last quarter."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    names = [f"{i // 2 + 1:08d}_{i % 2:03d}.png" for i in range(n)]
    rows = []
    for i, name in enumerate(names):
        width = side * 2 if i in wide else side
        rows.append(f"{name},{'Effusion' if i % 3 == 0 else 'No Finding'},{i % 2},{i // 2 + 1},{30 + i},"
                    f"{'MF'[i % 2]},{('PA', 'AP')[i % 2]},{width},{side},0.143,0.143\n")
        if i in missing:
            continue
        path = root / "images" / name
        if i in corrupt:
            path.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
            continue
        image = rng.integers(0, 256, size=(side, width), dtype=np.uint8)
        if i in sixteen:
            image = image.astype(np.uint16) * 200
        assert cv2.imwrite(str(path), image)
    (root / "Data_Entry_2017_v2020.csv").write_text(HEADER + "".join(rows))
    split_at = n - max(1, n // 4) if n % 2 == 0 else n - 1
    split_at -= split_at % 2  # keep both images of a patient in one split
    (root / "train_val_list.txt").write_text("\n".join(names[:split_at]))
    (root / "test_list.txt").write_text("\n".join(names[split_at:]))
    return names


def files_of(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in (IMAGES_FILE, NAMES_FILE, MANIFEST_FILE)}


def test_square_crop_box_centres_the_shorter_side() -> None:
    assert square_crop_box(100, 100) == (0, 0, 100)
    assert square_crop_box(120, 100) == (10, 0, 100)
    assert square_crop_box(100, 131) == (0, 15, 100)


def test_preprocess_crops_centre_then_area_resizes() -> None:
    image = np.arange(60 * 80, dtype=np.uint32).reshape(60, 80).astype(np.uint8)
    out = preprocess(image, size=30)
    expected = cv2.resize(image[:, 10:70], (30, 30), interpolation=cv2.INTER_AREA)
    assert out.dtype == np.uint8 and out.shape == (30, 30)
    np.testing.assert_array_equal(out, expected)


def test_preprocess_scales_16_bit_to_full_8_bit_range() -> None:
    image = np.linspace(1000, 4000, 32 * 32).reshape(32, 32).astype(np.uint16)
    out = preprocess(image, size=32)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


def test_build_open_and_rows(tmp_path: Path) -> None:
    names = write_tiny_nih(tmp_path / "nih", 8, missing=(2,), corrupt=(5,), wide=(3,), sixteen=(6,))
    index = load_index(tmp_path / "nih")
    report = build_cache(index, tmp_path / "cache", size=16, workers=1, progress=False)
    assert (report.count, report.ok, report.missing, report.processed) == (7, 6, 1, 7)
    assert list(report.failed) == [names[5]] and "truncated PNG" in report.failed[names[5]]

    view = open_cache(tmp_path / "cache")
    present = [n for i, n in enumerate(names) if i != 2]
    assert view.images.shape == (7, 16, 16) and view.size == 16 and list(view.names) == present
    assert view.ok.tolist() == [n != names[5] for n in present]
    assert view.rows_for([names[0], names[2], names[5], "nope.png", names[7]]).tolist() == [0, -1, -1, -1, 6]
    for row, name in enumerate(present):
        if name == names[5]:
            assert not view.images[row].any()  # an unreadable image is a zero row, flagged not ok
            continue
        expected = preprocess(read_gray(tmp_path / "nih" / "images" / name), size=16)
        np.testing.assert_array_equal(view.images[row], expected)
    manifest = json.loads((tmp_path / "cache" / MANIFEST_FILE).read_text())
    assert manifest["size"] == 16 and manifest["source_root"] == str((tmp_path / "nih").resolve())
    assert manifest["status"][4].startswith("error: ") and manifest["code_version"]
    assert not (tmp_path / "cache" / JOURNAL_FILE).exists() and not (tmp_path / "cache" / PLAN_FILE).exists()


def test_two_workers_give_the_same_bytes_as_one(tmp_path: Path) -> None:
    write_tiny_nih(tmp_path / "nih", 12, corrupt=(4,))
    index = load_index(tmp_path / "nih")
    build_cache(index, tmp_path / "one", size=20, workers=1, progress=False)
    build_cache(index, tmp_path / "two", size=20, workers=2, chunk_size=2, progress=False)
    assert files_of(tmp_path / "one") == files_of(tmp_path / "two")


def test_rerun_is_a_noop_and_incompatible_reruns_refuse(tmp_path: Path) -> None:
    names = write_tiny_nih(tmp_path / "nih", 6)
    index = load_index(tmp_path / "nih")
    out = tmp_path / "cache"
    build_cache(index, out, size=16, workers=1, progress=False)
    before = files_of(out)
    again = build_cache(index, out, size=16, workers=1, progress=False)
    assert again.skipped and again.processed == 0 and files_of(out) == before

    with pytest.raises(CacheError, match=r"manifest\.json.*size 16.*24"):
        build_cache(index, out, size=24, workers=1, progress=False)
    (tmp_path / "nih" / "images" / names[1]).unlink()
    with pytest.raises(CacheError, match="image list"):
        build_cache(load_index(tmp_path / "nih"), out, size=16, workers=1, progress=False)
    forced = build_cache(index, out, size=24, workers=1, progress=False, force=True)
    assert not forced.skipped and open_cache(out).images.shape == (6, 24, 24)


def test_resume_trusts_only_journaled_chunks(tmp_path: Path) -> None:
    """A partial build (plan + journal of some chunks + garbage rows elsewhere) finishes byte-identical."""
    write_tiny_nih(tmp_path / "nih", 10, corrupt=(7,))
    index = load_index(tmp_path / "nih")
    build_cache(index, tmp_path / "ref", size=16, workers=1, chunk_size=3, progress=False)
    reference = files_of(tmp_path / "ref")

    out = tmp_path / "partial"
    build_cache(index, out, size=16, workers=1, chunk_size=3, progress=False)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    # Rebuild the state of a build killed after chunk 1 was journaled: the plan, one journal line, a torn line,
    # and rows of unjournaled chunks holding stale garbage that must be rewritten.
    plan = {k: manifest[k] for k in ("format", "source_root", "size", "count", "names_sha256", "code_version")}
    (out / PLAN_FILE).write_text(json.dumps({**plan, "chunk_size": 3}))
    line = _journal_line(1, manifest["status"][3:6], manifest["checksum"][3:6])
    (out / JOURNAL_FILE).write_bytes(line.encode() + line.encode()[:17])
    (out / MANIFEST_FILE).unlink()
    with open(out / IMAGES_FILE, "r+b") as fh:
        fh.seek(0)
        fh.write(b"\xab" * 16 * 16 * 3)
        fh.seek(16 * 16 * 7)
        fh.write(b"\xcd" * 16 * 16 * 3)

    with pytest.raises(CacheError, match="not a finished cache"):
        open_cache(out)
    report = build_cache(index, out, size=16, workers=1, progress=False)
    assert report.resumed == 3 and report.processed == 7
    assert files_of(out) == reference


def test_read_journal_stops_at_the_first_bad_line(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_FILE
    good = _journal_line(0, ["ok", "ok"], ["a", "b"])
    bad_crc = _journal_line(1, ["ok", "ok"], ["c", "d"]).replace("ok", "OK", 1)
    after = _journal_line(2, ["ok"], ["e"])
    path.write_text(good + bad_crc + after)
    done, good_bytes = _read_journal(path, [2, 2, 1])
    assert list(done) == [0] and good_bytes == len(good.encode())
    path.write_text(good + _journal_line(5, ["ok"], ["x"]))  # chunk outside the plan
    assert list(_read_journal(path, [2, 2, 1])[0]) == [0]


def test_verify_reports_a_flipped_byte(tmp_path: Path) -> None:
    names = write_tiny_nih(tmp_path / "nih", 6)
    out = tmp_path / "cache"
    build_cache(load_index(tmp_path / "nih"), out, size=16, workers=1, progress=False)
    assert verify_cache(out).ok
    with open(out / IMAGES_FILE, "r+b") as fh:
        fh.seek(4 * 16 * 16 + 37)
        byte = fh.read(1)
        fh.seek(4 * 16 * 16 + 37)
        fh.write(bytes([byte[0] ^ 0xFF]))
    report = verify_cache(out)
    assert not report.ok and report.mismatched == [(4, names[4])]


def test_open_cache_refuses_broken_folders(tmp_path: Path) -> None:
    write_tiny_nih(tmp_path / "nih", 4)
    out = tmp_path / "cache"
    with pytest.raises(CacheError, match=r"manifest\.json: missing"):
        open_cache(out)
    build_cache(load_index(tmp_path / "nih"), out, size=16, workers=1, progress=False)
    with open(out / IMAGES_FILE, "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(CacheError, match=r"images\.u8: 100 bytes"):
        open_cache(out)
    (out / NAMES_FILE).write_text("a.png\n")
    with pytest.raises(CacheError, match=r"names\.txt: 1 lines"):
        open_cache(out)
    (out / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(CacheError, match=r"manifest\.json: unreadable"):
        open_cache(out)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"size": 4}, "--size"), ({"size": 16.0}, "--size"), ({"size": 16, "workers": 0}, "--workers"),
     ({"size": 16, "chunk_size": 0}, "--chunk"), ({"size": 16, "sync_seconds": -1.0}, "--sync-every")],
)
def test_bad_arguments_raise_cache_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    write_tiny_nih(tmp_path / "nih", 2)
    with pytest.raises(CacheError, match=message):
        build_cache(load_index(tmp_path / "nih"), tmp_path / "cache", progress=False, **kwargs)
    assert not (tmp_path / "cache" / IMAGES_FILE).exists()


def test_an_index_without_images_refuses(tmp_path: Path) -> None:
    write_tiny_nih(tmp_path / "nih", 4, missing=(0, 1, 2, 3))
    with pytest.raises(CacheError, match="none of the 4 indexed images exists"):
        build_cache(load_index(tmp_path / "nih"), tmp_path / "cache", size=16, progress=False)
    (tmp_path / "file").write_text("x")
    write_tiny_nih(tmp_path / "nih2", 2)
    with pytest.raises(CacheError, match="not a directory"):
        build_cache(load_index(tmp_path / "nih2"), tmp_path / "file", size=16, progress=False)


@pytest.mark.shared
def test_real_nih_images(nih_shared: Path, tmp_path: Path) -> None:
    index = load_index(nih_shared)
    present = np.flatnonzero(index.table["path"].to_numpy() != "")
    assert len(present) >= 3
    index.table.loc[index.table.index[present[3:]], "path"] = ""  # cache only three real images (speed)
    report = build_cache(index, tmp_path / "cache", size=64, workers=1, progress=False)
    assert report.count == 3 and report.ok == 3 and report.missing == len(index) - 3
    view = open_cache(tmp_path / "cache")
    for row in range(3):
        source = read_gray(index.table["path"].iloc[present[row]])
        np.testing.assert_array_equal(view.images[row], preprocess(source, size=64))


def test_a_second_build_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    import fcntl

    write_tiny_nih(tmp_path / "nih", 2)
    out = tmp_path / "cache"
    out.mkdir()
    with open(out / LOCK_FILE, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running build holds
        with pytest.raises(CacheError, match="is in use by"):
            build_cache(load_index(tmp_path / "nih"), out, size=16, workers=1, progress=False)
    assert build_cache(load_index(tmp_path / "nih"), out, size=16, workers=1, progress=False).ok == 2
