"""Predict speed on CPU, side by side in one run: cxrmtl (torch and ONNX Runtime) vs torchxrayvision's pipeline.

densenet121 @ 224 px with its initial (random) weights (weights do not change speed), every head of the predictor
(14 findings, abnormal, age, sex, view), on the real 1024 px NIH PNGs of ../shared/data/nih/images:

1. latency: one PNG file -> all outputs (decode, preprocessing, forward, result dict), p50 and p95, interleaved
   image by image across the three pipelines so that load on a shared machine hits them alike;
   torchxrayvision: ``skimage.io.imread`` + ``xrv.datasets.normalize`` + ``XRayCenterCrop`` + ``XRayResizer(224)``
   + ``xrv.models.DenseNet(weights=None)`` (its README's pipeline);
2. batch throughput: a list of files -> all outputs, batches of ``--batch`` (cxrmtl: ``Predictor.predict_files``
   with decoding threads; torchxrayvision: its loop, decode and preprocess then one forward per batch);
3. one pass instead of many: the multitask network (all heads, one backbone pass) vs 14 single-finding networks of
   the same backbone, forward throughput (medians of alternating forwards) and parameter counts;
4. a folder of ``--folder`` PNGs (the real ones plus 1024 px phantom ones): images/s through ``predict_files``, and
   the share of decoding vs the model (each measured alone, one thread of decoding).

Prints a markdown block (command, machine, date) for BENCHMARKS.md and writes it to ``--out``.

    python bench/bench_predict.py [--threads 2] [--latency-images 40] [--rounds 2] [--out bench/results/predict.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "kit"))  # predictkit: a run folder with a model's initial weights
from predictkit import write_untrained_run  # noqa: E402

from cxrmtl.config import Config, apply_overrides  # noqa: E402
from cxrmtl.data.imageio import read_gray  # noqa: E402
from cxrmtl.infer.engine import Predictor, decode_file  # noqa: E402

NIH_IMAGES = REPO.parent / "shared" / "data" / "nih" / "images"
TASKS = "tasks.specs=[findings, abnormal, age, sex, view]"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads (2 = the target)")
    p.add_argument("--latency-images", type=int, default=40, help="images timed one by one per pipeline")
    p.add_argument("--throughput-images", type=int, default=64, help="images per throughput round")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the throughput measurements")
    p.add_argument("--folder", type=int, default=500, help="PNG files in the folder run (real + phantom)")
    p.add_argument("--nih", type=Path, default=NIH_IMAGES)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "predict.md")
    return p.parse_args()


# --------------------------------------------------------------------------------------------- the pipelines
class XrvPipeline:
    """torchxrayvision's own inference pipeline (README): skimage decode, normalize, centre crop, resize, DenseNet."""

    def __init__(self) -> None:
        import torchvision
        import torchxrayvision as xrv

        self.xrv = xrv
        self.model = xrv.models.DenseNet(weights=None).eval()
        self.transform = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])

    def prepare(self, path: Path) -> np.ndarray:
        import skimage.io

        img = self.xrv.datasets.normalize(skimage.io.imread(path), 255)
        if img.ndim > 2:  # a few NIH PNGs are RGBA: the README takes the channel mean
            img = img[:, :, :3].mean(2)
        return self.transform(img[None, ...]).astype(np.float32)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).numpy()

    def one(self, path: Path) -> np.ndarray:
        return self.forward(self.prepare(path)[None])

    def many(self, paths: Sequence[Path], batch: int) -> int:
        done = 0
        for i in range(0, len(paths), batch):
            arrays = np.stack([self.prepare(p) for p in paths[i : i + batch]])
            done += len(self.forward(arrays))
        return done


def ours_one(predictor: Predictor) -> Callable[[Path], object]:
    return lambda path: predictor.predict_arrays([predictor.preprocess(read_gray(path))])


def ours_many(predictor: Predictor, workers: int) -> Callable[[Sequence[Path], int], int]:
    def run(paths: Sequence[Path], batch: int) -> int:
        return sum(r.result is not None for r in predictor.predict_files(paths, batch_size=batch, workers=workers))

    return run


# ------------------------------------------------------------------------------------------------ measurements
def latency(pipelines: dict[str, Callable[[Path], object]], paths: Sequence[Path]) -> dict[str, np.ndarray]:
    """Per pipeline, milliseconds per image; the pipelines take turns image by image."""
    for one in pipelines.values():  # warm-up: allocator, ORT session, first-call overheads
        one(paths[0])
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    for path in paths:
        for name, one in pipelines.items():
            t0 = time.perf_counter()
            one(path)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: np.asarray(v) for name, v in times.items()}


def throughput(pipelines: dict[str, Callable[[Sequence[Path], int], int]], paths: Sequence[Path], *, batch: int,
               rounds: int) -> dict[str, float]:
    """Per pipeline, the median over interleaved rounds of images/s over ``paths``."""
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, many in pipelines.items():
            t0 = time.perf_counter()
            n = many(paths, batch)
            rates[name].append(n / (time.perf_counter() - t0))
    return {name: float(np.median(v)) for name, v in rates.items()}


def one_pass_vs_many(cfg: Config, images: np.ndarray, *, rounds: int) -> dict[str, float]:
    """Multitask network (all heads) vs 14 single-finding networks, forward images/s and parameter counts."""
    from cxrmtl.labels import FINDINGS
    from cxrmtl.runs.build import build_model, build_tasks_for

    multi = build_model(cfg, build_tasks_for(cfg, pos_weight=None), pretrained=False).eval()
    singles = []
    for name in FINDINGS:
        single_cfg = apply_overrides(cfg, [f"tasks.specs=[findings:{name}]"])
        singles.append(build_model(single_cfg, build_tasks_for(single_cfg, pos_weight=None), pretrained=False).eval())
    x = (torch.from_numpy(images).float()[:, None] / 255.0 - cfg.data.pixel_mean) / cfg.data.pixel_std
    t_multi, t_single = [], []
    threads = torch.get_num_threads()
    # One thread: the ratio is about the architecture, and one thread keeps it steady on a shared machine (two
    # OpenMP threads wait on each other whenever another job takes a core).
    torch.set_num_threads(1)
    with torch.inference_mode():
        for net in (multi, *singles):  # warm-up: first-call allocations
            net(x)
        for _ in range(rounds):
            for model in singles:  # multi and single forwards alternate, so load swings hit both alike
                for net, times in ((multi, t_multi), (model, t_single)):
                    t0 = time.perf_counter()
                    net(x)
                    times.append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    params = sum(p.numel() for p in multi.parameters())
    params_single = sum(p.numel() for m in singles for p in m.parameters())
    one_pass, fourteen = float(np.median(t_multi)), len(singles) * float(np.median(t_single))
    return {"multi_ips": len(x) / one_pass, "singles_ips": len(x) / fourteen, "params": params,
            "params_singles": params_single}


def folder_run(predictor: Predictor, paths: Sequence[Path], *, batch: int, workers: int) -> dict[str, float]:
    """Pipelined images/s over a folder, and decode vs model time measured alone."""
    t0 = time.perf_counter()
    ok = sum(r.result is not None for r in predictor.predict_files(paths, batch_size=batch, workers=workers))
    wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    arrays = [decode_file(p, size=predictor.image_size) for p in paths]
    decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, len(arrays), batch):
        predictor.predict_arrays(arrays[i : i + batch])
    model = time.perf_counter() - t0
    return {"n": len(paths), "ok": ok, "wall": wall, "ips": ok / wall, "decode": decode, "model": model}


def phantom_pngs(out: Path, n: int) -> list[Path]:
    """``n`` 1024 px phantom PNGs (NIH layout), written by ``cxrmtl phantom`` in its own process: its forked workers
    hang when forked from a process whose torch thread pool already started."""
    import subprocess

    from cxrmtl.phantom.generate import sample_plan

    if n <= 0:
        return []
    patients = 4
    while len(sample_plan(patients=patients, seed=0).table) < n:  # images per patient vary: ask the plan
        patients += 5
    subprocess.run([sys.executable, "-m", "cxrmtl", "phantom", str(out), "--patients", str(patients),
                    "--size", "1024", "--seed", "0", "--workers", "2"], check=True, stdout=subprocess.DEVNULL)
    found = sorted(out.rglob("*.png"))
    if len(found) < n:
        raise SystemExit(f"phantom gave {len(found)} PNGs, {n} needed")
    return found[:n]


# ---------------------------------------------------------------------------------------------------- report
def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q))


def report(args: argparse.Namespace, lat: dict[str, np.ndarray], tput: dict[str, float], many: dict[str, float],
           folder: dict[str, float], auto: str, n_real: int) -> str:
    load = os.getloadavg()
    rows = [f"| pipeline | p50 ms | p95 ms | throughput img/s (batch {args.batch}) | vs torchxrayvision |",
            "|---|---|---|---|---|"]
    for name in lat:
        rows.append(f"| {name} | {pct(lat[name], 50):.1f} | {pct(lat[name], 95):.1f} | {tput[name]:.1f} | "
                    f"{tput[name] / tput['torchxrayvision']:.2f} x throughput, "
                    f"{pct(lat['torchxrayvision'], 50) / pct(lat[name], 50):.2f} x p50 |")
    share = folder["decode"] / (folder["decode"] + folder["model"])
    lines = [
        "```",
        f"command: python bench/bench_predict.py {' '.join(sys.argv[1:])}".rstrip(),
        f"machine: {cpu_model()}, {os.cpu_count()} cores; threads {args.threads}; torch {torch.__version__}",
        f"date:    {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)",
        "```",
        "",
        f"densenet121 @ 224, random weights, all heads; {len(lat['torchxrayvision'])} real NIH 1024 px PNGs one by "
        f"one (pipelines interleaved), throughput over {args.throughput_images} files, median of {args.rounds} rounds.",
        "",
        *rows,
        "",
        f"auto backend on this CPU: **{auto}** (lower p50 and higher throughput decide; see engine.AUTO_CPU_BACKEND)",
        "",
        f"One pass instead of many (torch, 1 thread, forward only, batch {args.batch}): "
        f"multitask {many['multi_ips']:.1f} img/s "
        f"vs 14 single-finding networks {many['singles_ips']:.1f} img/s = "
        f"**{many['multi_ips'] / many['singles_ips']:.1f} x**; parameters {many['params'] / 1e6:.2f} M vs "
        f"{many['params_singles'] / 1e6:.2f} M = "
        f"**{many['params_singles'] / many['params']:.1f} x** fewer.",
        "",
        f"Folder of {folder['n']} PNGs ({n_real} real NIH + {folder['n'] - n_real} phantom, 1024 px), backend {auto}, "
        f"batch {args.batch}, 2 decoding threads: **{folder['ips']:.1f} img/s** ({folder['wall']:.1f} s, "
        f"{folder['ok']} predicted). Measured alone: decoding + preprocessing {folder['decode']:.1f} s (1 thread), "
        f"model {folder['model']:.1f} s: decoding is {share:.0%} of the work, the model {1 - share:.0%}; the pipeline "
        f"took {folder['wall'] / (folder['decode'] + folder['model']):.2f} x their sum.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    real = sorted(args.nih.glob("*.png"))
    if not real:
        raise SystemExit(f"no PNGs in {args.nih}")
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        phantom = phantom_pngs(Path(tmp) / "phantom", args.folder - len(real))
        cfg = apply_overrides(Config(), ["model.backbone=densenet121", "data.image_size=224", TASKS])
        run = write_untrained_run(Path(tmp) / "run", cfg)
        predictors = {"cxrmtl torch": Predictor.from_run(run, backend="torch"),
                      "cxrmtl onnxruntime": Predictor.from_run(run, backend="onnx", threads=args.threads)}
        xrv = XrvPipeline()
        one = {name: ours_one(p) for name, p in predictors.items()} | {"torchxrayvision": xrv.one}
        lat = latency(one, real[: args.latency_images])
        many = {name: ours_many(p, workers=2) for name, p in predictors.items()} | {"torchxrayvision": xrv.many}
        tput = throughput(many, real[: args.throughput_images], batch=args.batch, rounds=args.rounds)
        faster = {name: (pct(lat[name], 50), -tput[name]) for name in predictors}
        auto_name = min(faster, key=faster.get)
        auto = "onnx" if "onnx" in auto_name else "torch"
        images = np.stack([predictors["cxrmtl torch"].preprocess(read_gray(p)) for p in real[: args.batch]])
        passes = one_pass_vs_many(cfg, images, rounds=args.rounds)
        folder_paths = (real + phantom)[: args.folder]
        folder = folder_run(predictors[auto_name], folder_paths, batch=args.batch, workers=2)
    text = report(args, lat, tput, passes, folder, auto, n_real=min(len(real), args.folder))
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Predict speed (bench/bench_predict.py)\n\n" + text)


if __name__ == "__main__":
    main()
