"""The engine's training recipe against a bare loop, side by side, on one phantom, same images seen, same seeds.

Why: `make demo` trailed `bench/learnability.py` (a plain torch loop: batch 64, lr 2e-3 one-cycle, no pos_weight)
by ~0.1 mean AUROC. This script writes one phantom to disk, caches it, and trains:
- ``bare``: learnability.py's loop (torchvision ResNet-18, 1 channel) on the engine's *train* split images;
- one engine run (``cxrmtl.train.loop.train``) per recipe in ``RECIPES`` (config overrides on demo_phantom.yaml),
every arm for the same number of images (``--images``; steps = images / batch) and scored the same way (mean test
AUROC over the 14 findings, written labels, patient-disjoint test split). Prints a markdown table.

Usage: python bench/bench_recipe.py [--patients 300] [--size 96] [--images 6000] [--seeds 0] [--recipes a,b]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Each recipe: (batch size, overrides on top of demo_phantom.yaml). "old" is the demo recipe before issue 11.
OLD = ("optim.lr=1e-3", "optim.warmup_steps=50", "optim.warmup_fraction=0", "tasks.pos_weight=true",
       "augment.enabled=true", "weighting.weights={}")
# learnability.py's lr and warm-up, no static task weights
ONE = ("optim.lr=2e-3", "optim.warmup_fraction=0.2", "optim.warmup_steps=0", "weighting.weights={}")
AUX01 = ("weighting.weights={abnormal: 0.1, age: 0.1, sex: 0.1, view: 0.1}",)  # after ONE: replaces its {}
RECIPES: dict[str, tuple[int, tuple[str, ...]]] = {
    "old": (32, OLD),
    "old_bs64": (64, OLD),
    "old_nopw": (32, (*OLD, "tasks.pos_weight=false")),
    "old_noaug": (32, (*OLD, "augment.enabled=false")),
    "old_lr2e-3": (32, (*OLD, "optim.lr=2e-3")),
    "findings_only": (32, (*OLD, "tasks.specs=findings")),
    "onecycle": (64, (*ONE, "tasks.pos_weight=false", "augment.enabled=false")),
    "onecycle_aug": (64, (*ONE, "tasks.pos_weight=false")),
    "onecycle_pw": (64, (*ONE, "augment.enabled=false")),
    "bare_like": (64, (*ONE, "tasks.pos_weight=false", "augment.enabled=false", "tasks.specs=findings",
                       "optim.grad_clip=0")),
    "bare_like_clip": (64, (*ONE, "tasks.pos_weight=false", "augment.enabled=false", "tasks.specs=findings")),
    "bare_like_aux": (64, (*ONE, "tasks.pos_weight=false", "augment.enabled=false", "optim.grad_clip=0")),
    "aux01": (64, (*ONE, "tasks.pos_weight=false", "augment.enabled=false", "optim.grad_clip=0", *AUX01)),
    "aux01_clip": (64, (*ONE, "tasks.pos_weight=false", "augment.enabled=false", *AUX01)),
    "aux01_aug": (64, (*ONE, "tasks.pos_weight=false", "optim.grad_clip=0", *AUX01)),
    "aux01_pw": (64, (*ONE, "augment.enabled=false", "optim.grad_clip=0", *AUX01)),
    "new": (64, ()),
    # the demo recipe with one change each (issue 11 §1, second round: why does multitask still trail?)
    "new_findings_only": (64, ("tasks.specs=findings", "weighting.weights={}")),
    "new_aux003": (64, ("weighting.weights={abnormal: 0.03, age: 0.03, sex: 0.03, view: 0.03}",)),
    "new_noage": (64, ("tasks.specs=[findings,abnormal,sex,view]",)),
    "new_noaug": (64, ("augment.enabled=false",)),
    "new_fp32": (64, ("train.amp=off",)),
    "new_bf16": (64, ("train.amp=bf16",)),
}


def make_phantom(root: Path, *, patients: int, size: int, phantom_size: int | None = None) -> tuple:
    """Write + cache one boosted phantom; returns (data dir, cache dir, index, cache view)."""
    from cxrmtl.data.cache import build_cache, open_cache
    from cxrmtl.data.nih import load_index
    from cxrmtl.phantom.generate import write_phantom

    data, cache = root / "data", root / "cache"
    if not (data / "Data_Entry_2017.csv").is_file():  # --workdir: a finished phantom is reused
        write_phantom(data, patients=patients, size=phantom_size or size, seed=0, prevalence="boosted", workers=2,
                      progress=False)
    index = load_index(data)
    build_cache(index, cache, size=size, workers=2, progress=False)
    return data, cache, index, open_cache(cache)


def _auroc_mean(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    values = [roc_auc_score(labels[:, j], scores[:, j]) for j in range(labels.shape[1])
              if 0 < labels[:, j].sum() < len(labels)]
    return float(np.mean(values))


def run_bare(index, cache, *, images: int, seed: int, batch: int = 64) -> dict:
    """learnability.py's loop on the engine's train split, for ``images`` images (rounded up to whole epochs)."""
    import learnability

    train, test = index.rows("train"), index.rows("test")
    rows = np.concatenate([train, test])
    data = {"images": np.asarray(cache.images[cache.rows_for(index.table["image"].to_numpy()[rows])]),
            "labels": index.findings[rows], "truth": index.findings[rows],
            "test": np.r_[np.zeros(len(train), bool), np.ones(len(test), bool)]}
    epochs = max(1, round(images / len(train)))
    t0 = time.perf_counter()
    result = learnability.train_and_score(data, epochs=epochs, seed=seed, batch=batch)
    return {"auroc": result["mean"], "seconds": time.perf_counter() - t0, "steps": epochs * -(-len(train) // batch)}


def run_engine(name: str, data: Path, cache: Path, index, out: Path, *, images: int, seed: int) -> dict:
    """One engine run of recipe ``name`` for ``images`` images; test AUROC of the last checkpoint."""
    from cxrmtl.config import load_config
    from cxrmtl.data.cache import open_cache
    from cxrmtl.demo import CONFIG_DIR
    from cxrmtl.infer.predictor import load_run, predict_split
    from cxrmtl.train.loop import train

    batch, overrides = RECIPES[name]
    n_train = len(index.rows("train"))
    epochs = max(1, round(images / n_train))
    cfg = load_config(CONFIG_DIR / "demo_phantom.yaml", [
        *overrides, f"seed={seed}", f"train.batch_size={batch}", f"train.epochs={epochs}",
        f"data.image_size={cache_size(cache)}", "train.progress=false", "train.checkpoint_every=0",
        "train.log_every=0", "train.select_metric=val/findings/auroc_mean"])
    t0 = time.perf_counter()
    summary = train(cfg, data_root=data, out=out, cache_dir=cache, device="cpu")
    seconds = time.perf_counter() - t0
    preds = predict_split(load_run(out, which="last"), open_cache(cache), index, "test")
    return {"auroc": _auroc_mean(preds.outputs["findings"], preds.targets["findings"]), "seconds": seconds,
            "steps": summary.steps}


def cache_size(cache: Path) -> int:
    from cxrmtl.data.cache import open_cache

    return open_cache(cache).size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--phantom-size", type=int, help="generate the phantom at this size (the demo: 256), "
                        "cache it at --size")
    parser.add_argument("--images", type=int, default=6000, help="images seen per arm (rounded to whole epochs)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--recipes", default="bare,old,new")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep the phantom and runs here (reused when present)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = args.recipes.split(",")
    with tempfile.TemporaryDirectory(prefix="bench_recipe_") as tmp:
        root = args.workdir or Path(tmp)
        data, cache, index, view = make_phantom(root, patients=args.patients, size=args.size,
                                               phantom_size=args.phantom_size)
        n_train, n_test = len(index.rows("train")), len(index.rows("test"))
        results: dict[str, list[dict]] = {}
        for seed in seeds:
            for arm in arms:
                if arm == "bare":
                    r = run_bare(index, view, images=args.images, seed=seed)
                else:
                    out = root / f"run_{arm}_{seed}"
                    if out.exists():
                        shutil.rmtree(out)
                    r = run_engine(arm, data, cache, index, out, images=args.images, seed=seed)
                results.setdefault(arm, []).append(r)
                print(f"seed {seed} {arm}: AUROC {r['auroc']:.3f}, {r['steps']} steps, {r['seconds']:.0f} s",
                      flush=True)
    from machine import cpu_model

    print(f"\ncommand: `python {' '.join(sys.argv)}`; {os.cpu_count()} cores, {cpu_model()}, "
          f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.1f}")
    print(f"PHANTOM: {args.patients} patients at {args.size} px, train {n_train} / test {n_test} images; "
          f"~{args.images} images seen per arm; seeds {seeds}\n")
    print("| arm | batch | overrides | steps | mean test AUROC (14 findings) | train s |")
    print("|---|---|---|---|---|---|")
    for arm, rs in results.items():
        batch, overrides = (64, ("learnability.py loop",)) if arm == "bare" else RECIPES[arm]
        aurocs = [r["auroc"] for r in rs]
        spread = f" (±{np.std(aurocs):.3f})" if len(aurocs) > 1 else ""
        print(f"| {arm} | {batch} | {' '.join(overrides) or 'demo_phantom.yaml'} | {rs[0]['steps']} | "
              f"{np.mean(aurocs):.3f}{spread} | {np.mean([r['seconds'] for r in rs]):.0f} |")


if __name__ == "__main__":
    main()
