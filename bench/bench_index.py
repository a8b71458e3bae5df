"""Indexing the full NIH metadata (112,120 rows): cxrmtl load_index against torchxrayvision's NIH_Dataset.

Usage: python bench/bench_index.py [--root ../shared/data/nih] [--rounds 3] [--out bench/results/index.md]

Both read the same Data_Entry_2017_v2020.csv.gz and build a (N, 14) label matrix; load_index also reads the split
lists, carves the validation split, checks patient disjointness, reads the boxes and (second row) lists the image
folders. torchxrayvision (all views, no per-patient reduction) is the baseline. Same process, same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)

from cxrmtl.data.nih import load_index

REPO = Path(__file__).resolve().parents[1]


def timed(build: Callable[[], object], rounds: int) -> tuple[float, float, float, int]:
    """Best and median wall seconds, best CPU seconds of this process over ``rounds`` builds, and the rows built.

    CPU time is what the build costs; wall time also counts waiting for cores that other jobs hold.
    """
    wall, cpu, rows = [], [], 0
    for _ in range(rounds):
        start, start_cpu = time.perf_counter(), time.process_time()
        rows = len(build())
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), statistics.median(wall), min(cpu), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "nih")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "index.md")
    args = parser.parse_args()
    import torchxrayvision as xrv

    with tempfile.TemporaryDirectory() as imgpath:
        builders: dict[str, Callable[[], object]] = {
            "cxrmtl load_index(find_images=False)": lambda: load_index(args.root, find_images=False),
            "cxrmtl load_index (also lists image folders)": lambda: load_index(args.root),
            "baseline: torchxrayvision NIH_Dataset(views=['*'], unique_patients=False)": lambda: (
                xrv.datasets.NIH_Dataset(imgpath=imgpath, views=["*"], unique_patients=False)
            ),
        }
        results = {name: timed(build, args.rounds) for name, build in builders.items()}
    lines = [
        "# NIH index benchmark",
        "",
        f"- command: `{' '.join(['python', *sys.argv])}`",
        f"- machine: {os.cpu_count()} cores (`nproc` {len(os.sched_getaffinity(0))}), {cpu_model()}; "
        f"Python {platform.python_version()}, torchxrayvision {xrv.__version__}",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; taken while other jobs shared the "
        "machine (ratios matter, not absolute times)",
        f"- data: {args.root} (metadata of all 112,120 images)",
        "",
        f"| build | rows | wall s (best of {args.rounds}) | wall s (median) | CPU s (best) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {rows:,} | {best:.2f} | {median:.2f} | {cpu:.2f} |"
        for name, (best, median, cpu, rows) in results.items()
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
