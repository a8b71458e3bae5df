"""Localisation and paired-bootstrap speed, side by side with a baseline, in one run on this machine.

1. Heatmap -> boxes: ``localize.localization.heatmap_to_boxes`` (OpenCV ``connectedComponentsWithStats``) against
   scipy.ndimage ``label`` + ``find_objects`` doing the same job (baseline, the first implementation; both must
   return the same boxes).
2. Paired patient-level bootstrap of AUROC differences: ``ablate.paired.paired_auroc_difference`` (vectorised, one
   shared resampler) against the plain loop (baseline): for every resample, expand the drawn patients' images and call
   scikit-learn's roc_auc_score for both models.
3. Grad-CAM throughput of ``localize.cam.grad_cam`` on a timm ResNet-18 (no baseline: the figure sizes a
   localisation run).

    python bench/bench_localization.py [--quick]

Prints a markdown table (command, machine, date); copy it to bench/results/localization.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)


def _best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _scipy_boxes(heatmap: np.ndarray, thresholds: tuple[int, ...] = (60, 180)) -> np.ndarray:
    from scipy import ndimage

    low, high = float(heatmap.min()), float(heatmap.max())
    norm = (heatmap - low) * (255.0 / (high - low))
    found = []
    for t in thresholds:
        regions, count = ndimage.label(norm >= t, structure=np.ones((3, 3), dtype=bool))
        for rows, cols in ndimage.find_objects(regions)[:count]:
            found.append((cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start))
    return np.asarray(list(dict.fromkeys(found)), dtype=np.float64).reshape(-1, 4)


def _heatmaps(size: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random maps with a few blobs (Grad-CAM-like after upsampling)."""
    import cv2

    rng = np.random.default_rng(seed)
    return [cv2.resize(rng.random((7, 7)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
            for _ in range(n)]


def bench_boxes(size: int, n: int, repeat: int) -> tuple[str, float, float]:
    from cxrmtl.localize.localization import heatmap_to_boxes

    maps = _heatmaps(size, n)
    for m in maps:  # same boxes, same order up to sorting
        ours, base = heatmap_to_boxes(m), _scipy_boxes(m)
        assert sorted(map(tuple, ours)) == sorted(map(tuple, base)), "implementations disagree"
    ours_t = _best_of(lambda: [heatmap_to_boxes(m) for m in maps], repeat) / n
    base_t = _best_of(lambda: [_scipy_boxes(m) for m in maps], repeat) / n
    return f"heatmap -> boxes, {size}x{size} (ms/map)", ours_t * 1e3, base_t * 1e3


def bench_paired(n_images: int, n_resamples: int) -> tuple[str, float, float]:
    from sklearn.metrics import roc_auc_score

    from cxrmtl.ablate.paired import paired_auroc_difference
    from cxrmtl.eval.bootstrap import PatientResampler

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(n_images, 2))
    pids = rng.integers(0, n_images // 3, size=n_images)
    a, b = y + rng.normal(0, 1, y.shape), y + rng.normal(0, 1.5, y.shape)

    def ours() -> np.ndarray:
        return paired_auroc_difference(a, b, y, pids, n_resamples=n_resamples).samples

    def naive() -> np.ndarray:
        draws = PatientResampler(pids, n_resamples=n_resamples)
        out = np.empty((n_resamples, 2))
        for r in range(n_resamples):
            idx = np.repeat(np.arange(n_images), draws.weights(r, r + 1)[0].astype(int))
            for k in range(2):
                out[r, k] = roc_auc_score(y[idx, k], a[idx, k]) - roc_auc_score(y[idx, k], b[idx, k])
        return out

    assert np.allclose(ours(), naive()), "implementations disagree"
    return (f"paired bootstrap, {n_images} images x 2 findings, {n_resamples} resamples (s)",
            _best_of(ours, 1), _best_of(naive, 1))


def bench_gradcam(size: int, batch: int) -> tuple[str, float, float]:
    import timm
    import torch
    from torch import nn

    from cxrmtl.localize.cam import grad_cam

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=0)
            self.head = nn.Linear(self.backbone.num_features, 14)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"findings": self.head(self.backbone(x))}

    model = Net().eval()
    x = torch.randn(batch, 1, size, size)
    grad_cam(model, x, task="findings", columns=[0] * batch)  # warm-up
    seconds = _best_of(lambda: grad_cam(model, x, task="findings", columns=list(range(batch))), 2)
    return f"Grad-CAM ResNet-18, {size} px, batch {batch} (ms/image)", seconds / batch * 1e3, float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller problem sizes")
    args = parser.parse_args()
    quick = args.quick
    rows = [
        bench_boxes(224, 20 if quick else 100, 3),
        bench_boxes(1024, 5 if quick else 20, 2),
        bench_paired(2000 if quick else 10000, 50 if quick else 200),
        bench_gradcam(224, 4 if quick else 8),
    ]
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    nproc = subprocess.run(["nproc", "--all"], capture_output=True, text=True).stdout.strip()
    print(f"command: `{' '.join(['python', *sys.argv])}` (OMP_NUM_THREADS={threads})  ")
    print(f"machine: {nproc} cores, {cpu_model()}; date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ")
    print("taken under load (other jobs share the machine): read the ratios\n")
    print("| task | cxrmtl | baseline | baseline / cxrmtl |")
    print("|---|---|---|---|")
    for name, ours, base in rows:
        ratio = f"{base / ours:.1f}x" if np.isfinite(base) else "-"
        base_s = f"{base:.3f}" if np.isfinite(base) else "-"
        print(f"| {name} | {ours:.3f} | {base_s} | {ratio} |")


if __name__ == "__main__":
    main()
