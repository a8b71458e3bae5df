"""Heatmap methods and layers side by side on one trained run's boxed test images (Wang et al.'s protocol).

For every CAM method of ``localize.cam.CAM_METHODS`` and every layer asked for, localise the boxed images of the
split and print: mean accuracy at T(IoBB)=0.5 over the boxed findings, mean false boxes per case (AFP) there, the
pointing-game hit rate, the heatmap's native resolution and the seconds it took. The first row is the baseline a
user would otherwise get (Grad-CAM from the backbone's last stage, the old default).

    python bench/bench_cam.py RUN --data DATA --cache CACHE [--layers backbone.layer4,backbone.layer3]

Prints a markdown table (command, machine, date) for BENCHMARKS.md / docs/localization.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--layers", default="backbone.layer4,backbone.layer3")
    parser.add_argument("--methods", default="gradcam,gradcam++,hirescam")
    parser.add_argument("--split", default="test")
    parser.add_argument("--picture", type=Path, help="write a before (first row) / after (--after) picture here")
    parser.add_argument("--after", default="", help="method@layer of the picture's second row")
    args = parser.parse_args()
    import torch

    from cxrmtl.data.cache import open_cache
    from cxrmtl.data.nih import load_index
    from cxrmtl.infer.predictor import load_run
    from cxrmtl.localize.run import localize_run

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    loaded = load_run(args.run, which="best", device="cpu")
    d = loaded.config.data
    index = load_index(args.data, val_fraction=d.val_fraction, split_seed=d.split_seed)
    cache = open_cache(args.cache)
    rows = []
    for layer in args.layers.split(","):
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            result = localize_run(loaded, cache, index, split=args.split, layer=layer, cam=method)
            seconds = time.perf_counter() - t0
            feat = _native_size(loaded.model, layer, d.image_size)
            at = result.iobb[result.iobb["threshold"] == 0.5].set_index("finding")
            rows.append((method, layer, feat, result, seconds, at))
            print(f"{method} {layer}: IoBB@0.5 {result.mean_iobb05:.3f}, AFP {result.mean_afp05:.2f}, pointing "
                  f"{result.pointing['hit_rate'].mean():.3f}, {seconds:.0f} s", flush=True)
    print(f"\ncommand: `python {' '.join(sys.argv)}`; {os.cpu_count()} cores, {cpu_model()}, "
          f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.1f}")
    print(f"PHANTOM: {len(rows[0][3].cases)} boxed (image, finding) cases of split {args.split}, "
          f"{d.image_size} px input, run {args.run}\n")
    findings = list(rows[0][5].index)
    print("| method | layer | map | mean acc T(IoBB)=0.5 | mean AFP | pointing | "
          + " | ".join(findings) + " | s |")
    print("|---" * (7 + len(findings)) + "|")
    for method, layer, feat, result, seconds, at in rows:
        cells = " | ".join(f"{at.loc[f, 'accuracy']:.2f}" for f in findings)
        print(f"| {method} | {layer} | {feat}x{feat} | {result.mean_iobb05:.3f} | {result.mean_afp05:.2f} | "
              f"{result.pointing['hit_rate'].mean():.3f} | {cells} | {seconds:.0f} |")
    if args.picture:
        method, layer = args.after.split("@")
        before_after(loaded, cache, index, before=("gradcam", args.layers.split(",")[0]), after=(method, layer),
                     out=args.picture, split=args.split)
        print(f"picture: {args.picture}")


def before_after(loaded, cache, index, *, before: tuple[str, str], after: tuple[str, str], out: Path,
                 per_finding: int = 1, split: str = "test") -> None:
    """One row of overlays per (method, layer): the first boxed case of each finding, same cases in both rows."""
    import cv2
    import numpy as np
    import torch

    from cxrmtl.data.loader import normalize
    from cxrmtl.localize.cam import grad_cam
    from cxrmtl.localize.gallery import render_overlay
    from cxrmtl.localize.localization import heatmap_to_boxes, iobb
    from cxrmtl.localize.run import pending_cases

    outputs = list(loaded.labels["findings"])
    pending, _ = pending_cases(index, cache, split=split, outputs=outputs)
    chosen, seen = [], {}
    for p in pending:
        if seen.get(p.finding, 0) < per_finding:
            chosen.append(p)
            seen[p.finding] = seen.get(p.finding, 0) + 1
    d = loaded.config.data
    pixels = np.stack([np.asarray(cache.images[p.cache_row]) for p in chosen])
    x = normalize(torch.from_numpy(pixels).unsqueeze(1), mean=d.pixel_mean, std=d.pixel_std)
    rows = []
    for method, layer in (before, after):
        maps = grad_cam(loaded.model, x, task="findings", columns=[p.column for p in chosen], layer=layer,
                        method=method)
        tiles = []
        for p, image, heat in zip(chosen, pixels, maps, strict=True):
            pred = heatmap_to_boxes(heat)
            matched = list(iobb(pred, p.gt).max(axis=1) > 0.5) if len(pred) else []
            tile = render_overlay(image, heat, gt=p.gt, pred=pred, matched=matched, title=p.finding[:12])
            tiles.append(cv2.resize(tile, (160, 160), interpolation=cv2.INTER_AREA))
        label = np.zeros((160, 52, 3), np.uint8)
        cv2.putText(label, "before" if not rows else "after", (4, 150), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(np.hstack([label, *tiles]))
    out.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image  # a 128-colour palette keeps the picture under 300 kB for docs/

    rgb = cv2.cvtColor(np.vstack(rows), cv2.COLOR_BGR2RGB)
    Image.fromarray(rgb).quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def _native_size(model, layer: str, size: int) -> int:
    import torch

    module = model.get_submodule(layer)
    shapes = []
    handle = module.register_forward_hook(lambda m, i, o: shapes.append(o.shape[-1]))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, size, size))
    handle.remove()
    return int(shapes[0])


if __name__ == "__main__":
    main()
