"""Benchmark: cache build vs a decode-only loop with the same decoder, on the real NIH PNGs, in one run.

    python bench/bench_cache.py [--root ../shared/data/nih] [--size 256] [--repeats 2] [--out bench/results/cache.md]

Measures images/s of (a) ``read_gray`` over every image in one process (decode only), (b) the same over two
processes, (c) ``build_cache`` with 1 and (d) 2 workers into a fresh folder. Each is run ``--repeats`` times,
interleaved, and the best run counts (the machine is shared, so the best is the least disturbed). Targets (issue 2):
build(1) >= 0.85 x decode-only(1), build(2) >= 1.8 x build(1). Prints a markdown table; ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    """nproc, CPU model, load average and date: what a reader needs to weigh the numbers."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, StopIteration):
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{os.cpu_count()} cores (nproc), {model}, load average {load} (1/5/15 min), {date}"


def _decode(path: str) -> int:
    from cxrmtl.data.imageio import read_gray

    return read_gray(path).size


def cpu_seconds() -> float:
    """User + system CPU of this process and of its finished children (pool workers are reaped at pool exit)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def decode_only(paths: list[str], workers: int) -> tuple[float, float]:
    """(wall s, CPU s) to decode every path with ``read_gray`` (the cache's decoder), in ``workers`` processes."""
    import cv2

    cv2.setNumThreads(1)
    start, cpu = time.perf_counter(), cpu_seconds()
    if workers == 1:
        for path in paths:
            _decode(path)
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_decode, paths, chunksize=4):
                pass
    return time.perf_counter() - start, cpu_seconds() - cpu


def build(index: object, size: int, workers: int, scratch: Path) -> tuple[float, float]:
    """(wall s, CPU s) for a fresh ``build_cache`` of the whole index (folder removed first)."""
    from cxrmtl.data.cache import build_cache

    out = scratch / f"cache_w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    start, cpu = time.perf_counter(), cpu_seconds()
    report = build_cache(index, out, size=size, workers=workers, progress=False)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    assert report.count == report.ok, report.failed
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "nih")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from cxrmtl.data.nih import load_index

    index = load_index(args.root)
    paths = [p for p in index.table["path"].tolist() if p]
    for path in paths:  # warm the page cache so every variant reads from memory
        Path(path).read_bytes()
    runs: dict[str, list[tuple[float, float]]] = {"decode1": [], "decode2": [], "build1": [], "build2": []}
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        for _ in range(args.repeats):
            runs["decode1"].append(decode_only(paths, 1))
            runs["build1"].append(build(index, args.size, 1, Path(tmp)))
            runs["decode2"].append(decode_only(paths, 2))
            runs["build2"].append(build(index, args.size, 2, Path(tmp)))
    text = table(args, len(paths), runs)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def table(args: argparse.Namespace, n: int, runs: dict[str, list[tuple[float, float]]]) -> str:
    rate = {key: n / min(wall for wall, _ in values) for key, values in runs.items()}
    cpu = {key: 1000 * min(c for _, c in values) / n for key, values in runs.items()}
    command = "python " + " ".join([str(Path(sys.argv[0]).relative_to(REPO)) if Path(sys.argv[0]).is_absolute()
                                    else sys.argv[0], *sys.argv[1:]])
    rows = [
        ("decode only (`read_gray`), 1 process", "decode1", "1.00 (baseline)"),
        ("`build_cache`, 1 worker", "build1", f"{rate['build1'] / rate['decode1']:.2f} (target >= 0.85)"),
        ("decode only, 2 processes", "decode2", f"{rate['decode2'] / rate['decode1']:.2f} x decode-only(1)"),
        ("`build_cache`, 2 workers", "build2", f"{rate['build2'] / rate['build1']:.2f} x build(1) (target >= 1.8); "
                                               f"{rate['build2'] / rate['decode2']:.2f} x decode-only(2)"),
    ]
    lines = [
        f"Cache build, {n} real NIH PNGs (1024x1024) -> {args.size}x{args.size}, best of {args.repeats} runs each.",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        "- taken under load (other jobs share the cores): compare ratios, not absolute numbers.",
        "",
        "| variant | images/s (wall) | all runs, wall s | CPU ms/image | ratio (wall) |",
        "|---|---:|---|---:|---|",
    ]
    for label, key, ratio in rows:
        walls = ", ".join(f"{wall:.2f}" for wall, _ in runs[key])
        lines.append(f"| {label} | {rate[key]:.1f} | {walls} | {cpu[key]:.1f} | {ratio} |")
    lines += [
        "",
        f"CPU cost per image, build(1) / decode-only(1): {cpu['build1'] / cpu['decode1']:.2f}; build(2) / build(1): "
        f"{cpu['build2'] / cpu['build1']:.2f} (load-independent: per-worker efficiency and parallel overhead).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
