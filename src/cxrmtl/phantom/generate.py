"""The built-in phantom: a synthetic ChestX-ray14 written in the exact NIH layout.

Two stages. ``sample_plan`` draws the metadata in one process: patients with several studies, age, sex and view,
label sets and image geometry following the statistics derived from the real Data_Entry_2017_v2020.csv
(``resources/phantom_stats.json``, made by scripts/derive_phantom_stats.py), a patient-disjoint official-style
split and text-mining-like label noise. ``render_study`` then draws one image from seeds derived from
``(seed, image index)`` and ``(seed, patient id)`` with numpy's SeedSequence, so the output is identical whatever
the number of workers. ``write_phantom`` does both and writes the NIH files; ``render_plan`` returns arrays for
in-memory use (learnability checks, tests).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxrmtl.errors import ConfigError, DataLayoutError
from cxrmtl.fsio import atomic_write_text
from cxrmtl.labels import (
    BBOX_FINDINGS,
    FINDING_INDEX,
    FINDINGS,
    LABEL_ALIASES,
    NIH_ARCHIVES,
    NO_FINDING,
    PHANTOM_BOOSTED_MIN_PREVALENCE,
    PHANTOM_BOX_SHARE,
    PHANTOM_DEFAULT_DIFFICULTY,
    PHANTOM_DEFAULT_LABEL_NOISE,
    PHANTOM_IMAGES_PER_FOLDER,
    PHANTOM_PREVALENCE_MODES,
    SEX_CODES,
    TEST_LIST,
    TRAIN_VAL_LIST,
    VIEW_CODES,
)
from cxrmtl.phantom import anatomy
from cxrmtl.phantom.findings import REGISTRY
from cxrmtl.version import code_version

DATA_ENTRY_FILE = "Data_Entry_2017.csv"
BBOX_FILE = "BBox_List_2017.csv"
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"  # the real header, 4 numbers spill into unnamed columns
WORKING_MAX = 512  # anatomy is drawn at most at this size and resized: detail above it is noise anyway
MAX_AGE = 95  # oldest age in the v2020 metadata
# SeedSequence stream tags: plan (metadata), patient anatomy, per-image rendering.
_PLAN, _PATIENT, _IMAGE = 0, 1, 2
_BOX_NAME = {v: k for k, v in LABEL_ALIASES.items()}  # Infiltration -> Infiltrate, as in BBox_List_2017.csv


@lru_cache(maxsize=1)
def load_stats() -> dict:
    """The derived statistics table shipped with the package."""
    text = resources.files("cxrmtl").joinpath("resources", "phantom_stats.json").read_text()
    return json.loads(text)


@dataclass(frozen=True)
class PhantomPlan:
    """Metadata of every phantom image, in Data_Entry order, plus the true and the written (noisy) labels."""

    table: (
        pd.DataFrame
    )  # image, patient_id, follow_up, age, sex, view, width, height, spacing_x, spacing_y, split, boxed
    truth: np.ndarray  # (N, 14) uint8: what is drawn
    labels: np.ndarray  # (N, 14) uint8: what Data_Entry says (truth after label noise)
    seed: int

    def __len__(self) -> int:
        return len(self.table)


def _check(name: str, ok: bool, problem: str) -> None:
    if not ok:
        raise ConfigError(f"phantom option {name}: {problem}")


def validate_options(
    *,
    patients: int,
    size: int,
    difficulty: float,
    label_noise: float,
    prevalence: str,
    box_share: float = PHANTOM_BOX_SHARE,
) -> None:
    """Raise ConfigError naming the option when a phantom option is out of range."""
    _check("patients", isinstance(patients, int) and patients >= 1, f"must be an integer >= 1, got {patients!r}")
    _check("size", isinstance(size, int) and 32 <= size <= 4096, f"must be an integer in 32..4096, got {size!r}")
    _check("difficulty", 0.0 <= difficulty < 1.0, f"must be in [0, 1), got {difficulty!r}")
    _check("label_noise", 0.0 <= label_noise <= 0.5, f"must be in [0, 0.5], got {label_noise!r}")
    _check(
        "prevalence",
        prevalence in PHANTOM_PREVALENCE_MODES,
        f"must be one of {PHANTOM_PREVALENCE_MODES}, got {prevalence!r}",
    )
    _check("box_share", 0.0 <= box_share <= 1.0, f"must be in [0, 1], got {box_share!r}")


def combo_table(prevalence: str) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Observed label combinations and their sampling probabilities ("real" or "boosted")."""
    combos = load_stats()["combos"]
    names = [tuple(c.split("|")) if c else () for c in combos]
    weights = np.array(list(combos.values()), dtype=np.float64)
    if prevalence == "boosted":
        weights = boost_weights(names, weights, floor=PHANTOM_BOOSTED_MIN_PREVALENCE)
    return names, weights / weights.sum()


def boost_weights(names: list[tuple[str, ...]], weights: np.ndarray, *, floor: float, rounds: int = 60) -> np.ndarray:
    """Reweight whole label combinations until every finding reaches ``floor`` prevalence.

    Scaling the weight of the combinations that contain a rare finding (iterative proportional fitting) lifts it
    while keeping which findings occur together, i.e. the co-occurrence structure.
    """
    member = np.array([[f in c for f in FINDINGS] for c in names], dtype=bool)
    w = weights.astype(np.float64).copy()
    for _ in range(rounds):
        prev = (w[:, None] * member).sum(0) / w.sum()
        low = (prev < floor * 1.001) & (prev > 0)  # a finding no combination holds cannot be lifted
        if not low.any():
            break
        for j in np.flatnonzero(low):
            w[member[:, j]] *= floor * 1.02 / prev[j]
    return w


def _sample_hist(rng: np.random.Generator, hist: dict | list, n: int) -> np.ndarray:
    if isinstance(hist, dict):
        values = np.array([int(k) for k in hist], dtype=np.int64)
        counts = np.array(list(hist.values()), dtype=np.float64)
    else:
        values, counts = np.arange(len(hist)), np.asarray(hist, dtype=np.float64)
    return rng.choice(values, size=n, p=counts / counts.sum())


def _patients(rng: np.random.Generator, stats: dict, patients: int) -> pd.DataFrame:
    """Per patient: number of studies, sex, age at first study."""
    studies = _sample_hist(rng, stats["images_per_patient"], patients)
    male = rng.random(patients) < stats["male_share"]
    age = np.where(
        male,
        _sample_hist(rng, stats["age_hist_first_study"]["M"], patients),
        _sample_hist(rng, stats["age_hist_first_study"]["F"], patients),
    )
    return pd.DataFrame({"patient_id": np.arange(1, patients + 1), "studies": studies, "male": male, "age0": age})


def _studies(rng: np.random.Generator, stats: dict, people: pd.DataFrame) -> pd.DataFrame:
    """One row per image: follow-up number, age (rising over follow-ups), view (AP more likely for inpatients)."""
    rep = people.loc[people.index.repeat(people["studies"])].reset_index(drop=True)
    follow = rep.groupby("patient_id").cumcount().to_numpy()
    gaps = rng.exponential(stats["mean_years_between_studies"], size=len(rep)) * (follow > 0)
    elapsed = pd.Series(gaps).groupby(rep["patient_id"]).cumsum().to_numpy()
    age = np.minimum(rep["age0"].to_numpy() + np.floor(elapsed), MAX_AGE).astype(np.int64)
    buckets = stats["ap_share_by_studies"]
    p_ap = np.array(buckets["ap_share"])[np.searchsorted(np.array(buckets["bucket_upper"]), rep["studies"].to_numpy())]
    view = (rng.random(len(rep)) < p_ap).astype(np.int8)
    geometries = np.array(stats["geometries"], dtype=np.float64)
    pick = rng.choice(len(geometries), size=len(rep), p=geometries[:, 4] / geometries[:, 4].sum())
    return pd.DataFrame(
        {
            "image": [f"{p:08d}_{f:03d}.png" for p, f in zip(rep["patient_id"], follow, strict=True)],
            "patient_id": rep["patient_id"].to_numpy(np.int64),
            "follow_up": follow.astype(np.int32),
            "age": age,
            "sex": np.where(rep["male"], SEX_CODES["M"], SEX_CODES["F"]).astype(np.int8),
            "view": view,
            "width": geometries[pick, 0].astype(np.int64),
            "height": geometries[pick, 1].astype(np.int64),
            "spacing_x": geometries[pick, 2],
            "spacing_y": geometries[pick, 3],
        }
    )


def _split(rng: np.random.Generator, table: pd.DataFrame, test_share: float) -> np.ndarray:
    """Patient-disjoint test split holding about ``test_share`` of the images (the official 25,596 / 112,120).

    Like the official list, patients with many studies are more likely to be in the test set: patients are visited
    in an order weighted by their number of images and taken while they fit the remaining test quota.
    """
    counts = table.groupby("patient_id").size()
    keys = rng.random(len(counts)) ** (1.0 / counts.to_numpy())  # weighted random order (Efraimidis-Spirakis)
    order = np.argsort(-keys)
    sizes = counts.to_numpy()[order]
    target = test_share * len(table)
    taken, test = 0, []
    for k, c in zip(order[:-1], sizes[:-1], strict=True):  # the last patient stays in train_val: never all test
        if taken + c <= target + 0.5 * c:
            test.append(k)
            taken += c
        if taken >= target:
            break
    return np.where(table["patient_id"].isin(counts.index.to_numpy()[test]), "test", "train_val")


def _labels(rng: np.random.Generator, n: int, prevalence: str, label_noise: float) -> tuple[np.ndarray, np.ndarray]:
    """True label sets (whole observed combinations) and the written labels after text-mining-like noise.

    Noise drops each true positive with probability ``label_noise`` and adds false positives so that they make up
    about the same share of the written positives, i.e. both sensitivity and PPV fall by about ``label_noise``
    (NIH labels were mined from reports; Oakden-Rayner, Academic Radiology 2020, measured PPV 10-30 % below NIH's
    claim).
    """
    names, probs = combo_table(prevalence)
    pick = rng.choice(len(names), size=n, p=probs)
    member = np.array([[f in c for f in FINDINGS] for c in names], dtype=np.uint8)
    truth = member[pick]
    prev = (probs[:, None] * member).sum(0)
    drop = rng.random(truth.shape) < label_noise
    add = rng.random(truth.shape) < label_noise * prev / np.maximum(1.0 - prev, 1e-6)
    written = np.where(truth == 1, ~drop, add).astype(np.uint8)
    return truth, written


def sample_plan(
    *,
    patients: int,
    seed: int = 0,
    prevalence: str = "boosted",
    label_noise: float = PHANTOM_DEFAULT_LABEL_NOISE,
    box_share: float = PHANTOM_BOX_SHARE,
) -> PhantomPlan:
    """Draw every image's metadata and labels (see module docstring); cheap, single process."""
    validate_options(
        patients=patients, size=256, difficulty=0.0, label_noise=label_noise, prevalence=prevalence, box_share=box_share
    )
    stats = load_stats()
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PLAN]))
    table = _studies(rng, stats, _patients(rng, stats, patients))
    table["split"] = _split(rng, table, stats["test_image_share"])
    truth, written = _labels(rng, len(table), prevalence, label_noise)
    boxable = (
        truth[:, [FINDING_INDEX[f] for f in BBOX_FINDINGS]] & written[:, [FINDING_INDEX[f] for f in BBOX_FINDINGS]]
    )
    table["boxed"] = boxable.any(axis=1) & (rng.random(len(table)) < box_share)
    return PhantomPlan(table=table, truth=truth, labels=written, seed=seed)


def single_plan(
    *,
    findings: tuple[str, ...] = (),
    sex: str = "M",
    age: int = 50,
    view: str = "PA",
    seed: int = 0,
    patient_id: int = 1,
) -> PhantomPlan:
    """A one-image plan with chosen findings and metadata (gallery, tests); boxes are always kept."""
    unknown = [f for f in findings if f not in FINDING_INDEX]
    _check("findings", not unknown, f"unknown finding names {unknown}; use {FINDINGS}")
    _check("sex", sex in SEX_CODES, f"must be one of {tuple(SEX_CODES)}, got {sex!r}")
    _check("view", view in VIEW_CODES, f"must be one of {tuple(VIEW_CODES)}, got {view!r}")
    hot = np.zeros((1, len(FINDINGS)), np.uint8)
    hot[0, [FINDING_INDEX[f] for f in findings]] = 1
    table = pd.DataFrame(
        {"image": [f"{patient_id:08d}_000.png"], "patient_id": [patient_id], "follow_up": [0], "age": [age],
         "sex": [SEX_CODES[sex]], "view": [VIEW_CODES[view]], "width": [2500], "height": [2048],
         "spacing_x": [0.168], "spacing_y": [0.168], "split": ["train_val"], "boxed": [True]}
    )  # fmt: skip
    return PhantomPlan(table=table, truth=hot, labels=hot.copy(), seed=seed)


def conspicuity(difficulty: float, rng: np.random.Generator) -> float:
    """Lesion strength for one finding: falls linearly with difficulty, log-normal spread so some are subtle."""
    return float(2.0 * (1.0 - difficulty) * rng.lognormal(0.0, 0.35))


def render_study(
    plan: PhantomPlan,
    row: int,
    *,
    size: int,
    difficulty: float = PHANTOM_DEFAULT_DIFFICULTY,
) -> tuple[np.ndarray, list[tuple[str, float, float, float, float]]]:
    """Draw image ``row`` of ``plan`` at ``size`` px; returns (uint8 image, boxes in pixels of that image).

    Boxes are returned for the boxed findings that are both drawn and written, on rows the plan marks ``boxed``.
    """
    rec = plan.table.iloc[row]
    patient_rng = np.random.default_rng(np.random.SeedSequence([plan.seed, _PATIENT, int(rec["patient_id"])]))
    # Separate streams for the anatomy and the lesions: the same study with and without a finding differs only
    # where the finding is (what the box tests check).
    rng, lesion_rng = (np.random.default_rng(s) for s in np.random.SeedSequence([plan.seed, _IMAGE, row]).spawn(2))
    present = [FINDINGS[j] for j in np.flatnonzero(plan.truth[row])]
    strength = {name: conspicuity(difficulty, lesion_rng) for name in present}
    params = anatomy.sample_params(
        sex=int(rec["sex"]), age=float(rec["age"]), view=int(rec["view"]), patient_rng=patient_rng, rng=rng
    )
    for name in present:
        REGISTRY[name].adjust(params, lesion_rng, strength[name])
    work = min(size, WORKING_MAX)
    chest = anatomy.render_chest(params, width=work, rng=rng)
    boxes = []
    for name in present:
        for box in REGISTRY[name].draw(chest, lesion_rng, strength[name]):
            boxes.append((name, *box))
    image = anatomy.finish(chest, rng=rng, noise_tile=anatomy.noise_tile(size), size=size)
    keep = bool(rec["boxed"])
    written = set(np.flatnonzero(plan.labels[row]).tolist())
    out = [
        (n, x * size, y * size, w * size, h * size)
        for n, x, y, w, h in boxes
        if keep and n in BBOX_FINDINGS and FINDING_INDEX[n] in written
    ]
    return image, out


_WORKER_PLAN: list[PhantomPlan] = []  # the plan, handed to pool workers once (fork) instead of with every chunk


def _init_worker(plan: PhantomPlan) -> None:
    cv2.setNumThreads(1)
    _WORKER_PLAN[:] = [plan]


# zlib level 1 with Huffman-only coding after the SUB filter: at 256 px 1.35 ms and 37.7 KB per image, against
# 2.8 ms / 40.1 KB for plain level 1 and ~3.3x that for Pillow's default level 6 (measured with cv2.imencode on a
# phantom image, 200 rounds). The pixels are identical; only the encoding differs. Older OpenCV lacks the filter flag.
PNG_OPTIONS: list[int] = [
    cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY
]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    PNG_OPTIONS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


def _write_png(out: Path, plan: PhantomPlan, row: int, image: np.ndarray) -> None:
    """Write one image via a hidden temporary name, then rename: a crash never leaves a truncated PNG."""
    path = out / folder_of(row, len(plan)) / "images" / plan.table["image"].iat[row]
    tmp = path.with_name(".tmp_" + path.name)
    if not cv2.imwrite(str(tmp), image, PNG_OPTIONS):
        raise DataLayoutError(f"{tmp}: could not write PNG (disk full or folder not writable?)")
    os.replace(tmp, path)


def _render_chunk(args: tuple) -> list[tuple[int, np.ndarray | None, list]]:
    """Render rows; with an output folder the worker writes the PNGs itself and returns only the boxes."""
    rows, size, difficulty, out = args
    plan = _WORKER_PLAN[0]
    results = []
    for row in rows:
        image, boxes = render_study(plan, row, size=size, difficulty=difficulty)
        if out is not None:
            _write_png(out, plan, row, image)
            image = None
        results.append((row, image, boxes))
    return results


def _chunks(n: int, chunk: int) -> list[range]:
    return [range(i, min(i + chunk, n)) for i in range(0, n, chunk)]


def iter_rendered(
    plan: PhantomPlan, *, size: int, difficulty: float, workers: int = 1, rows: np.ndarray | None = None
) -> Iterator[tuple[int, np.ndarray, list]]:
    """Yield (row, image, boxes) in row order, rendering in ``workers`` processes (same output for any count)."""
    return _iter(plan, size=size, difficulty=difficulty, workers=workers, rows=rows, out=None)


def _iter(
    plan: PhantomPlan, *, size: int, difficulty: float, workers: int, rows: np.ndarray | None, out: Path | None
) -> Iterator[tuple[int, np.ndarray | None, list]]:
    order = np.arange(len(plan)) if rows is None else np.asarray(rows)
    chunk = 16
    jobs = [(order[r.start : r.stop].tolist(), size, difficulty, out) for r in _chunks(len(order), chunk)]
    if workers <= 1:
        _init_worker(plan)
        for job in jobs:
            yield from _render_chunk(job)
        return
    import multiprocessing as mp

    anatomy.noise_tile(size)  # build the shared noise field once, before forking, instead of once per worker
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(plan,)) as pool:
        for result in pool.imap(_render_chunk, jobs):
            yield from result


def render_plan(
    plan: PhantomPlan, *, size: int, difficulty: float = PHANTOM_DEFAULT_DIFFICULTY, workers: int = 1
) -> np.ndarray:
    """All images of a plan as one uint8 array (N, size, size), for in-memory experiments."""
    images = np.empty((len(plan), size, size), np.uint8)
    for row, image, _ in iter_rendered(plan, size=size, difficulty=difficulty, workers=workers):
        images[row] = image
    return images


def folder_of(row: int, n_images: int) -> str:
    """Kaggle-style folder for an image: images_001 .. images_012, filled in order (10,000 each at full scale)."""
    per = min(PHANTOM_IMAGES_PER_FOLDER, max(1, math.ceil(n_images / NIH_ARCHIVES)))
    return f"images_{row // per + 1:03d}"


@dataclass(frozen=True)
class PhantomReport:
    """What write_phantom produced."""

    root: Path
    images: int
    patients: int
    boxes: int
    test_images: int


def _label_string(labels: np.ndarray) -> str:
    names = sorted(FINDINGS[j] for j in np.flatnonzero(labels))  # NIH joins labels alphabetically
    return "|".join(names) if names else NO_FINDING


def data_entry_text(plan: PhantomPlan) -> str:
    """Data_Entry_2017.csv content with the real header and column formats."""
    header = ",".join(load_stats()["header"])
    t = plan.table
    sex = {v: k for k, v in SEX_CODES.items()}
    view = {v: k for k, v in VIEW_CODES.items()}
    lines = [header]
    for i, r in enumerate(t.itertuples(index=False)):
        lines.append(
            f"{r.image},{_label_string(plan.labels[i])},{r.follow_up},{r.patient_id},{r.age},{sex[r.sex]},"
            f"{view[r.view]},{r.width},{r.height},{r.spacing_x!r},{r.spacing_y!r}"
        )
    return "\n".join(lines) + "\n"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataLayoutError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise DataLayoutError(
            f"{out}: folder is not empty; the phantom writes a fresh NIH layout (choose a new folder)"
        )


def write_phantom(
    out: Path,
    *,
    patients: int,
    size: int,
    seed: int = 0,
    difficulty: float = PHANTOM_DEFAULT_DIFFICULTY,
    label_noise: float = PHANTOM_DEFAULT_LABEL_NOISE,
    prevalence: str = "boosted",
    box_share: float = PHANTOM_BOX_SHARE,
    workers: int = 1,
    progress: bool = False,
) -> PhantomReport:
    """Write a phantom in the NIH layout to the empty folder ``out``.

    Images are written first (each via a temporary name, then renamed), the metadata files last, so an interrupted
    run never leaves a Data_Entry that promises images that are not there.
    """
    validate_options(
        patients=patients,
        size=size,
        difficulty=difficulty,
        label_noise=label_noise,
        prevalence=prevalence,
        box_share=box_share,
    )
    _check("workers", isinstance(workers, int) and workers >= 1, f"must be an integer >= 1, got {workers!r}")
    out = Path(out)
    _check_out(out)
    plan = sample_plan(
        patients=patients, seed=seed, prevalence=prevalence, label_noise=label_noise, box_share=box_share
    )
    n = len(plan)
    names = plan.table["image"].tolist()
    for folder in sorted({folder_of(i, n) for i in range(n)}):
        (out / folder / "images").mkdir(parents=True, exist_ok=True)
    box_lines = [BBOX_HEADER]
    stream = _iter(plan, size=size, difficulty=difficulty, workers=workers, rows=None, out=out)
    if progress:
        from tqdm import tqdm

        stream = tqdm(stream, total=n, unit="img", desc="phantom")
    for row, _, boxes in stream:  # workers write the PNGs; boxes come back in row order
        box_lines += [f"{names[row]},{_BOX_NAME.get(f, f)},{x:.4f},{y:.4f},{w:.4f},{h:.4f}" for f, x, y, w, h in boxes]
    split = plan.table["split"].to_numpy()
    atomic_write_text(out / TRAIN_VAL_LIST, "\n".join(sorted(np.array(names)[split == "train_val"])))
    atomic_write_text(out / TEST_LIST, "\n".join(sorted(np.array(names)[split == "test"])))
    atomic_write_text(out / BBOX_FILE, "\n".join(box_lines) + "\n")
    # phantom.json records how the folder was made; evaluation reads it to label every report "PHANTOM DATA".
    atomic_write_text(out / "phantom.json", json.dumps({
        "generator": "cxrmtl phantom", "code_version": code_version(), "patients": patients, "images": n,
        "size": size, "seed": seed, "difficulty": difficulty, "label_noise": label_noise, "prevalence": prevalence,
        "box_share": box_share}, indent=1) + "\n")
    atomic_write_text(out / DATA_ENTRY_FILE, data_entry_text(plan))
    return PhantomReport(
        root=out, images=n, patients=patients, boxes=len(box_lines) - 1, test_images=int((split == "test").sum())
    )


__all__ = [
    "PhantomPlan",
    "PhantomReport",
    "boost_weights",
    "combo_table",
    "conspicuity",
    "data_entry_text",
    "folder_of",
    "iter_rendered",
    "load_stats",
    "render_plan",
    "render_study",
    "sample_plan",
    "single_plan",
    "validate_options",
    "write_phantom",
]
