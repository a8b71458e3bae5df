"""Benchmark: the cache loader vs a PIL-per-sample torch Dataset (the CheXNet reimplementations' way), one run.

    python bench/bench_loader.py [--root ../shared/data/nih] [--size 256] [--batch 64] [--copies 20]
                                 [--baseline-samples 192] [--out bench/results/loader.md]

The real NIH PNGs are cached once at ``--size`` (``build_cache``, 2 workers); an in-memory index repeats their rows
``--copies`` times, all in the train split, so one shuffled epoch is ``copies x 225`` samples drawn from a 256x256
uint8 memmap. The loader runs with 0, 1 and 2 prefetch threads; every batch is fully materialised (images, targets,
masks). The baseline is a ``torch.utils.data.Dataset`` whose ``__getitem__`` opens the sample's PNG with PIL,
converts to L, resizes to size x size (bilinear, torchvision's default) and returns a uint8 tensor plus its targets,
batched by ``DataLoader`` with 0 and 2 worker processes, on the first ``--baseline-samples`` samples of the same
shuffled order. Target (issue 2): >= 5,000 images/s on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cache import REPO, machine


def replicated_index(index: object, copies: int) -> object:
    """The present rows of ``index`` repeated ``copies`` times, all in split train (names repeat: same cache rows)."""
    import pandas as pd

    from cxrmtl.data.nih import NIHIndex

    present = np.flatnonzero(index.table["path"].to_numpy() != "")
    rows = np.tile(present, copies)
    table = index.table.iloc[rows].reset_index(drop=True).assign(split="train")
    return NIHIndex(root=index.root, table=table, findings=index.findings[rows], boxes=pd.DataFrame())


def time_loader(cache: object, index: object, *, batch: int, workers: int, epochs: int) -> tuple[float, int]:
    """Seconds and images for ``epochs`` shuffled epochs of ``make_loader`` with ``workers`` prefetch threads."""
    from cxrmtl.data.loader import make_loader

    loader = make_loader(cache=cache, index=index, split="train", batch_size=batch, shuffle=True, seed=0,
                         num_workers=workers)
    images = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for item in loader:
            images += item["image"].shape[0]
    return time.perf_counter() - start, images


class PilDataset:
    """One PNG per sample: open with PIL, convert to L, resize, to tensor (CheXNet reimplementations' pattern)."""

    def __init__(self, paths: list[str], targets: np.ndarray, size: int) -> None:
        self.paths, self.targets, self.size = paths, targets, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[object, object]:
        import torch
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            gray = im.convert("L").resize((self.size, self.size), Image.BILINEAR)
            pixels = torch.from_numpy(np.asarray(gray, dtype=np.uint8).copy()).unsqueeze(0)
        return pixels, torch.from_numpy(self.targets[i])


def time_pil(index: object, *, size: int, batch: int, workers: int, samples: int) -> tuple[float, int]:
    """Seconds and images for the PIL-per-sample DataLoader over the first ``samples`` of a shuffled order."""
    import torch
    from torch.utils.data import DataLoader

    order = np.random.default_rng(0).permutation(len(index.table))[:samples]
    paths = index.table["path"].to_numpy()[order].tolist()
    dataset = PilDataset(paths, index.findings[order].astype(np.float32), size)
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers,
                        multiprocessing_context="fork" if workers else None)
    torch.set_num_threads(1)
    images = 0
    start = time.perf_counter()
    for pixels, _ in loader:
        images += pixels.shape[0]
    return time.perf_counter() - start, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "nih")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--baseline-samples", type=int, default=192)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from cxrmtl.data.cache import build_cache, open_cache
    from cxrmtl.data.nih import load_index

    torch.set_num_threads(1)
    real = load_index(args.root)
    index = replicated_index(real, args.copies)
    results: list[tuple[str, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        build_cache(real, Path(tmp) / "cache", size=args.size, workers=2, progress=False)
        cache = open_cache(Path(tmp) / "cache")
        np.asarray(cache.images).sum()  # page the memmap in: measure the loader, not the first disk read
        for workers in (0, 1, 2):
            seconds, images = time_loader(cache, index, batch=args.batch, workers=workers, epochs=args.epochs)
            results.append((f"cache loader, {workers} prefetch thread(s)", seconds, images))
        for workers in (0, 2):
            seconds, images = time_pil(index, size=args.size, batch=args.batch, workers=workers,
                                       samples=args.baseline_samples)
            results.append((f"PIL per sample (DataLoader, {workers} worker processes)", seconds, images))
    text = table(args, len(index.table), results)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def table(args: argparse.Namespace, n: int, results: list[tuple[str, float, int]]) -> str:
    command = "python " + " ".join(["bench/bench_loader.py", *sys.argv[1:]])
    best_pil = max(images / seconds for label, seconds, images in results if label.startswith("PIL"))
    lines = [
        f"Loader throughput, {args.size}x{args.size} uint8 cache of the real NIH PNGs, index repeated "
        f"{args.copies}x ({n} samples/epoch), batch {args.batch}, shuffled.",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        "- taken under load (other jobs share the cores): compare ratios, not absolute numbers.",
        "",
        "| variant | images | seconds | images/s | x best PIL baseline |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, seconds, images in results:
        rate = images / seconds
        lines.append(f"| {label} | {images} | {seconds:.2f} | {rate:,.0f} | {rate / best_pil:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
