"""Tests of data/loader.py over a real tiny cache: batch contents, sorted reads, seeding, DDP shards, resume."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cxrmtl import labels
from cxrmtl.data.cache import CacheView, build_cache, open_cache
from cxrmtl.data.loader import make_loader, shard_order
from cxrmtl.data.nih import NIHIndex, load_index
from cxrmtl.errors import CacheError, ConfigError

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)
N_IMAGES = 41
CORRUPT = 5  # a train image whose file is broken: cached as not ok, never served
MISSING = 6  # a train image without a file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[CacheView, NIHIndex]:
    """41 images of 31 patients (some with two studies), with labels, missing ages/sex, a corrupt and a missing file."""
    root = tmp_path_factory.mktemp("nih")
    (root / "images").mkdir()
    rng = np.random.default_rng(11)
    names, rows = [], []
    for i in range(N_IMAGES):
        patient = i if i < 21 else 21 + (i - 21) // 2
        name = f"{patient + 1:08d}_{i:03d}.png"
        names.append(name)
        finding = labels.FINDINGS[i % labels.NUM_FINDINGS] if i % 3 else "No Finding"
        age = "" if i % 7 == 0 else str(20 + i)
        sex = "" if i % 9 == 0 else "MF"[i % 2]
        rows.append(f"{name},{finding},{i % 2},{patient + 1},{age},{sex},{('PA', 'AP')[i % 2]},24,24,0.1,0.1\n")
        if i == MISSING:
            continue
        path = root / "images" / name
        if i == CORRUPT:
            path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
        else:
            cv2.imwrite(str(path), rng.integers(0, 256, (24, 24), dtype=np.uint8))
    (root / "Data_Entry_2017_v2020.csv").write_text(HEADER + "".join(rows))
    (root / "train_val_list.txt").write_text("\n".join(names[:33]))
    (root / "test_list.txt").write_text("\n".join(names[33:]))
    index = load_index(root, val_fraction=0.2)
    build_cache(index, root / "cache", size=8, workers=1, progress=False)
    return open_cache(root / "cache"), index


def served_rows(index: NIHIndex, cache: CacheView, split: str) -> np.ndarray:
    rows = index.rows(split)
    return rows[cache.rows_for(index.table["image"].to_numpy()[rows]) >= 0]


def collect(loader) -> list[dict]:
    return list(loader)


def test_batches_hold_the_cached_images_and_the_index_labels(tiny: tuple[CacheView, NIHIndex]) -> None:
    cache, index = tiny
    loader = make_loader(cache=cache, index=index, split="train", batch_size=4, shuffle=True, seed=3)
    targets = index.targets()
    seen = []
    for batch in loader:
        image, rows = batch["image"], batch["row"]
        assert image.dtype == torch.uint8 and image.shape[1:] == (1, 8, 8)
        assert rows.dtype == torch.int64 and batch["valid"].all()
        cache_rows = cache.rows_for(index.table["image"].to_numpy()[rows.numpy()])
        assert (np.diff(cache_rows) > 0).all()  # one sorted read per batch
        np.testing.assert_array_equal(image[:, 0].numpy(), cache.images[cache_rows])
        np.testing.assert_array_equal(batch["patient_id"].numpy(), index.table["patient_id"].to_numpy()[rows])
        assert set(batch["targets"]) == set(batch["masks"]) == set(labels.TARGET_NAMES)
        for name in labels.TARGET_NAMES:
            assert batch["targets"][name].dtype == torch.float32 and batch["masks"][name].dtype == torch.bool
            np.testing.assert_array_equal(batch["targets"][name].numpy(), targets[name][0][rows])
            np.testing.assert_array_equal(batch["masks"][name].numpy(), targets[name][1][rows])
        assert batch["targets"]["findings"].shape == (len(rows), labels.NUM_FINDINGS)
        seen.extend(rows.tolist())
    expected = served_rows(index, cache, "train")
    assert sorted(seen) == expected.tolist() and len(seen) == len(expected)
    assert CORRUPT not in seen and MISSING not in seen and len(loader) == -(-len(expected) // 4)
    assert not all(batch["masks"]["age"].all() for batch in loader)  # missing ages are masked, not dropped


def test_order_is_seeded_by_seed_and_epoch(tiny: tuple[CacheView, NIHIndex]) -> None:
    cache, index = tiny

    def order(seed: int, epoch: int, shuffle: bool = True) -> list[int]:
        loader = make_loader(cache=cache, index=index, split="train", batch_size=5, shuffle=shuffle, seed=seed)
        loader.set_epoch(epoch)
        return [r for batch in loader for r in batch["row"].tolist()]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert sorted(order(1, 1)) == sorted(order(1, 0))
    assert order(1, 0, shuffle=False) == served_rows(index, cache, "train").tolist()


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_eval_shards_serve_every_sample_once_with_padding_invalid(tiny: tuple[CacheView, NIHIndex],
                                                                   world_size: int) -> None:
    cache, index = tiny
    valid_rows: list[int] = []
    lengths = set()
    for rank in range(world_size):
        loader = make_loader(cache=cache, index=index, split="train", batch_size=3, shuffle=False, rank=rank,
                             world_size=world_size)
        batches = collect(loader)
        lengths.add((len(loader), len(batches), sum(len(b["row"]) for b in batches)))
        for batch in batches:
            valid_rows.extend(batch["row"][batch["valid"]].tolist())
    expected = served_rows(index, cache, "train")
    assert sorted(valid_rows) == expected.tolist()  # exactly once across ranks
    assert len(lengths) == 1  # every rank runs the same number of batches (DDP would hang otherwise)


def test_train_shards_are_disjoint_and_drop_last_cuts_evenly(tiny: tuple[CacheView, NIHIndex]) -> None:
    cache, index = tiny
    shards = []
    for rank in range(3):
        loader = make_loader(cache=cache, index=index, split="train", batch_size=2, shuffle=True, seed=5,
                             drop_last=True, rank=rank, world_size=3)
        loader.set_epoch(2)
        batches = collect(loader)
        assert all(len(b["row"]) == 2 and b["valid"].all() for b in batches) and len(batches) == len(loader)
        shards.append({r for b in batches for r in b["row"].tolist()})
    assert not (shards[0] & shards[1] or shards[0] & shards[2] or shards[1] & shards[2])


def test_shard_order_pads_by_repeating_the_head() -> None:
    order, valid = shard_order(n=5, shuffle=False, seed=0, epoch=0, rank=1, world_size=4, drop_last=False)
    assert order.tolist() == [1, 5 % 5] and valid.tolist() == [True, False]
    order, valid = shard_order(n=2, shuffle=False, seed=0, epoch=0, rank=3, world_size=4, drop_last=False)
    assert order.tolist() == [1] and valid.tolist() == [False]


def test_set_start_batch_resumes_mid_epoch_exactly(tiny: tuple[CacheView, NIHIndex]) -> None:
    cache, index = tiny
    loader = make_loader(cache=cache, index=index, split="train", batch_size=4, shuffle=True, seed=9)
    loader.set_epoch(4)
    full = [b["row"].tolist() for b in loader]
    loader.set_epoch(4)
    loader.set_start_batch(3)
    assert [b["row"].tolist() for b in loader] == full[3:]
    assert [b["row"].tolist() for b in loader] == full  # the skip applies to one iteration only
    loader.set_start_batch(len(loader))
    assert collect(loader) == []
    with pytest.raises(ConfigError, match="start batch"):
        loader.set_start_batch(len(loader) + 1)


@pytest.mark.parametrize("num_workers", [1, 3])
def test_prefetch_threads_give_the_same_batches(tiny: tuple[CacheView, NIHIndex], num_workers: int) -> None:
    cache, index = tiny
    kwargs = {"cache": cache, "index": index, "split": "train", "batch_size": 3, "shuffle": True, "seed": 1}
    plain = collect(make_loader(**kwargs))
    threaded_loader = make_loader(**kwargs, num_workers=num_workers)
    threaded = collect(threaded_loader)
    assert len(plain) == len(threaded)
    for a, b in zip(plain, threaded, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["row"], b["row"])
    for batch in threaded_loader:  # leaving early must not hang or leak threads
        assert batch["image"].shape[0] == 3
        break


def test_bad_arguments_are_named(tiny: tuple[CacheView, NIHIndex]) -> None:
    cache, index = tiny
    base = {"cache": cache, "index": index, "split": "train", "batch_size": 4, "shuffle": False}
    for changes, field in [({"batch_size": 0}, "batch_size"), ({"rank": 2, "world_size": 2}, "rank"),
                           ({"world_size": 0}, "world_size"), ({"num_workers": -1}, "num_workers"),
                           ({"split": "nope"}, "split"), ({"batch_size": 100, "drop_last": True}, "batch_size")]:
        with pytest.raises(ConfigError, match=field):
            make_loader(**{**base, **changes})
    with pytest.raises(ConfigError, match="epoch"):
        make_loader(**base).set_epoch(-1)


def test_a_split_without_cached_images_is_a_cache_error(tiny: tuple[CacheView, NIHIndex], tmp_path: Path) -> None:
    cache, index = tiny
    test_rows = index.rows("test")
    other = NIHIndex(root=index.root, table=index.table.assign(image=[
        f"renamed_{n}" if i in set(test_rows.tolist()) else n for i, n in enumerate(index.table["image"])]),
        findings=index.findings, boxes=index.boxes)
    with pytest.raises(CacheError, match="'test' images"):
        make_loader(cache=cache, index=other, split="test", batch_size=2, shuffle=False)
