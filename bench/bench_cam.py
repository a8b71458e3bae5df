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
    args = parser.parse_args()
    import torch

    from cxrmtl.data.cache import open_cache
    from cxrmtl.data.nih import load_index
    from cxrmtl.infer.predictor import load_run
    from cxrmtl.localize.run import localize_run

    torch.set_num_threads(2)
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
