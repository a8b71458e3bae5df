"""data/labelcut.py: fewer positive training labels for chosen findings, masked (never flipped), seeded, and only in
the split it is applied to (the loader's training samples)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrmtl import labels
from cxrmtl.config import DataConfig
from cxrmtl.data.labelcut import LabelCut, cut_positives, cut_record, kept_count
from cxrmtl.errors import ConfigError

HERNIA, EDEMA, EFFUSION = (labels.FINDING_INDEX[f] for f in ("Hernia", "Edema", "Effusion"))


def _arrays(n: int = 400, seed: int = 0) -> tuple[dict, dict, np.ndarray]:
    """Loader-like targets/masks: random findings (Hernia ~10 %, Edema ~20 %), abnormal = OR, every label known."""
    rng = np.random.default_rng(seed)
    findings = (rng.random((n, labels.NUM_FINDINGS)) < 0.05).astype(np.float32)
    findings[:, HERNIA] = rng.random(n) < 0.10
    findings[:, EDEMA] = rng.random(n) < 0.20
    targets = {"findings": findings, "abnormal": findings.max(axis=1), "age": rng.random(n).astype(np.float32)}
    masks = {"findings": np.ones(findings.shape, bool), "abnormal": np.ones(n, bool), "age": rng.random(n) < 0.9}
    return targets, masks, np.arange(1000, 1000 + n)


@pytest.mark.parametrize(("positives", "fraction", "kept"), [
    (85, 0.1, 9),  # 8.5 rounds half up
    (84, 0.1, 8),
    (20, 0.25, 5),
    (3, 0.1, 1),  # at least one positive stays
    (0, 0.1, 0),
    (7, 1.0, 7),
])
def test_kept_count_rounds_half_up_and_keeps_at_least_one(positives: int, fraction: float, kept: int) -> None:
    assert kept_count(positives, fraction) == kept


def test_cut_masks_exactly_the_dropped_positives_and_touches_nothing_else() -> None:
    targets, masks, rows = _arrays()
    cut = LabelCut(findings=("Hernia", "Edema"), fraction=0.25, seed=4)
    new, counts = cut_positives(targets, masks, rows, cut)
    for count, col in zip(counts, (HERNIA, EDEMA), strict=True):
        positives = np.flatnonzero(targets["findings"][:, col] > 0.5)
        assert count.positives == positives.size and count.kept == kept_count(positives.size, 0.25)
        labelled = np.flatnonzero(new["findings"][:, col] & (targets["findings"][:, col] > 0.5))
        assert labelled.size == count.kept  # exactly the kept positives stay labelled ...
        assert set(rows[labelled]) == set(count.kept_rows)
        negatives = targets["findings"][:, col] < 0.5
        assert new["findings"][negatives, col].all()  # ... every negative stays labelled
    others = [k for k in range(labels.NUM_FINDINGS) if k not in (HERNIA, EDEMA)]
    assert new["findings"][:, others].all()
    assert np.array_equal(new["age"], masks["age"])
    assert masks["findings"].all() and masks["abnormal"].all()  # the inputs are not modified
    # Masked, not flipped: the targets are the caller's arrays, untouched; only masks change.
    assert set(new) == set(masks)


def test_abnormal_is_unknown_where_it_hinged_on_a_masked_positive() -> None:
    targets, masks, rows = _arrays()
    new, _ = cut_positives(targets, masks, rows, LabelCut(findings=("Hernia", "Edema"), fraction=0.1, seed=0))
    dropped = (masks["findings"] & ~new["findings"]).any(axis=1)
    other_positive = ((targets["findings"] > 0.5) & new["findings"]).any(axis=1)
    assert dropped.any() and (dropped & other_positive).any() and (dropped & ~other_positive).any()
    assert not new["abnormal"][dropped & ~other_positive].any()  # only a hidden positive made it abnormal
    assert new["abnormal"][dropped & other_positive].all()  # abnormal anyway: still known
    assert new["abnormal"][~dropped].all()


def test_cut_is_deterministic_per_seed_and_per_finding() -> None:
    targets, masks, rows = _arrays()

    def kept(findings: tuple[str, ...], seed: int) -> dict[str, tuple[int, ...]]:
        _, counts = cut_positives(targets, masks, rows, LabelCut(findings=findings, fraction=0.25, seed=seed))
        return {c.finding: c.kept_rows for c in counts}

    assert kept(("Hernia", "Edema"), 1) == kept(("Hernia", "Edema"), 1)
    assert kept(("Hernia", "Edema"), 1)["Hernia"] != kept(("Hernia", "Edema"), 2)["Hernia"]
    # A finding's draw does not depend on which other findings are cut (or their order).
    assert kept(("Edema", "Hernia"), 1)["Hernia"] == kept(("Hernia",), 1)["Hernia"]


@pytest.mark.parametrize(("findings", "fraction", "message"), [
    (("Hernia",), 0.0, "rare_positive_fraction: must be in"),
    (("Hernia",), 1.5, "rare_positive_fraction: must be in"),
    (("Hernai",), 0.1, "rare_findings: unknown finding"),
    (("Hernia", "Hernia"), 0.1, "names a finding twice"),
    ((), 0.1, "rare_findings: empty"),
])
def test_impossible_cuts_are_refused_naming_the_field(findings: tuple, fraction: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LabelCut(findings=findings, fraction=fraction, seed=0)


def test_from_config_is_none_without_a_cut() -> None:
    assert LabelCut.from_config(DataConfig(), seed=3) is None
    cut = LabelCut.from_config(DataConfig(rare_positive_fraction=0.1), seed=3)
    assert cut == LabelCut(findings=labels.RARE_FINDINGS, fraction=0.1, seed=3)


def test_rare_findings_are_the_rarest_of_the_real_release() -> None:
    """labels.RARE_FINDINGS = the four lowest image prevalences of Data_Entry_2017_v2020.csv (phantom_stats.json)."""
    stats = json.loads((Path(labels.__file__).parent / "resources" / "phantom_stats.json").read_text())
    count = dict.fromkeys(labels.FINDINGS, 0)
    for combo, n in stats["combos"].items():
        for finding in filter(None, combo.split("|")):
            count[finding] += n
    assert sum(stats["combos"].values()) == labels.NIH_NUM_IMAGES
    rarest = sorted(labels.FINDINGS, key=count.__getitem__)[: len(labels.RARE_FINDINGS)]
    assert set(rarest) == set(labels.RARE_FINDINGS) and count["Hernia"] == 227


def test_record_lists_the_kept_images() -> None:
    targets, masks, _ = _arrays(n=60)
    cut = LabelCut(findings=("Edema",), fraction=0.5, seed=0)
    _, counts = cut_positives(targets, masks, np.arange(60), cut)
    names = np.array([f"img{i}.png" for i in range(60)])
    record = cut_record(cut, counts, image_names=names, split="train")
    entry = record["findings"]["Edema"]
    assert entry["kept"] == len(entry["kept_images"]) == counts[0].kept
    assert record["masked_not_negative"] is True and record["unit"] == "image" and record["split"] == "train"
    json.dumps(record)


# -- through the loader, on a real tiny cache -----------------------------------------------------------------------


def test_loader_cuts_only_the_split_it_is_asked_to(tiny_cache_env: tuple) -> None:
    from cxrmtl.data.loader import make_loader

    cache, index = tiny_cache_env
    cut = LabelCut(findings=("Effusion",), fraction=0.5, seed=0)
    plain = make_loader(cache=cache, index=index, split="train", batch_size=4, shuffle=False)
    cutted = make_loader(cache=cache, index=index, split="train", batch_size=4, shuffle=False, label_cut=cut)
    y = plain.samples.targets["findings"][:, EFFUSION] > 0.5
    assert y.sum() >= 3
    assert cutted.samples.cut[0].positives == y.sum() and cutted.samples.cut[0].kept == kept_count(int(y.sum()), 0.5)
    assert (cutted.samples.masks["findings"][:, EFFUSION] & y).sum() == cutted.samples.cut[0].kept
    assert np.array_equal(cutted.samples.targets["findings"], plain.samples.targets["findings"])
    for batch in cutted:  # the batches serve the cut masks
        pos = np.searchsorted(cutted.samples.index_rows, batch["row"].numpy())
        assert np.array_equal(batch["masks"]["findings"].numpy(), cutted.samples.masks["findings"][pos])
    for split in ("val", "test"):  # what validation and evaluation open: every label
        other = make_loader(cache=cache, index=index, split=split, batch_size=4, shuffle=False)
        assert other.samples.masks["findings"].all() and other.samples.cut == ()


@pytest.fixture(scope="module")
def tiny_cache_env(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    from trainkit import write_tiny_nih

    from cxrmtl.data.cache import build_cache, open_cache
    from cxrmtl.data.nih import load_index

    root = write_tiny_nih(tmp_path_factory.mktemp("nih"))
    index = load_index(root, val_fraction=0.25)
    build_cache(index, root / "cache", size=16, workers=1, progress=False)
    return open_cache(root / "cache"), index
