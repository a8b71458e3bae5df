"""PNG decoders side by side on the real NIH images: Pillow, OpenCV and pyspng, plus read_gray end to end.

Usage: python bench/bench_decode.py [--root ../shared/data/nih] [--rounds 3] [--out bench/results/decode.md]

Every decoder reads the same files from the page cache (all files are read once before timing) in the same run,
so the ratios are comparable even on a loaded machine. Also prints which PNG kinds each decoder handles (RGBA,
16-bit, palette, gray+alpha, 16-bit colour), which decides read_gray's decoder order and fallbacks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pyspng
from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from PIL import Image

from cxrmtl.data.imageio import PNG_DECODERS, read_gray

REPO = Path(__file__).resolve().parents[1]


def decode_pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def decode_cv2(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def decode_spng(data: bytes) -> np.ndarray:
    return pyspng.load(data)


DECODERS: dict[str, Callable[[bytes], np.ndarray]] = {
    "Pillow (np.asarray(Image.open))": decode_pillow,
    "OpenCV (cv2.imdecode IMREAD_UNCHANGED)": decode_cv2,
    "pyspng (pyspng.load)": decode_spng,
}


def time_all(runners: dict[str, Callable[[], int]], rounds: int) -> dict[str, tuple[float, float]]:
    """Best wall-clock and best CPU images/s of each runner; runners take turns within each round, so load that
    other jobs put on the machine hits all of them alike. CPU time excludes waiting for a core."""
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            count = run()
            wall[name].append(count / (time.perf_counter() - start))
            cpu[name].append(count / max(time.process_time() - start_cpu, 1e-9))
    return {name: (max(wall[name]), max(cpu[name])) for name in runners}


def decode_all(decode: Callable[[bytes], np.ndarray], blobs: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        for blob in blobs:
            decode(blob)
        return len(blobs)

    return run


def read_all(paths: list[Path]) -> Callable[[], int]:
    def run() -> int:
        for path in paths:
            read_gray(path)
        return len(paths)

    return run


def read_gray_bytes(data: bytes) -> np.ndarray:
    """read_gray on a temporary file holding ``data`` (read_gray takes paths)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.png"
        path.write_bytes(data)
        return read_gray(path)


def support_cases() -> dict[str, tuple[bytes, np.ndarray]]:
    """Small PNGs of each kind with the expected gray content."""
    rng = np.random.default_rng(0)
    gray = (rng.integers(0, 256, (64, 64), dtype=np.uint8) // 16) * 16
    gray16 = rng.integers(0, 65536, (64, 64), dtype=np.uint16)
    cases = {}
    for mode in ("RGBA", "LA"):
        buf = io.BytesIO()
        Image.fromarray(gray).convert(mode).save(buf, format="PNG")
        cases[{"RGBA": "RGBA 8-bit", "LA": "gray+alpha 8-bit"}[mode]] = (buf.getvalue(), gray)
    cases["palette"] = (palette_png(gray), gray)
    cases["gray 16-bit"] = (cv2.imencode(".png", gray16)[1].tobytes(), gray16)
    cases["RGB 16-bit"] = (cv2.imencode(".png", np.dstack([gray16] * 3))[1].tobytes(), gray16)
    return cases


def palette_png(gray: np.ndarray) -> bytes:
    """A palette PNG whose indices are a shuffled gray palette (so an index is never its own gray value)."""
    levels = np.unique(gray)
    order = np.random.default_rng(1).permutation(len(levels))
    indices = np.searchsorted(levels, gray)
    image = Image.fromarray(order[indices].astype(np.uint8), mode="P")
    palette = np.zeros((256, 3), np.uint8)
    palette[order] = levels[:, None]
    image.putpalette(palette.ravel().tolist())
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def handles(decode: Callable[[bytes], np.ndarray], data: bytes, expected: np.ndarray) -> bool:
    try:
        out = np.asarray(decode(data))
    except Exception:  # a decoder that cannot handle the case raises its own error type
        return False
    if out is None or out.ndim == 0:
        return False
    first = out if out.ndim == 2 else out[:, :, 0]
    return first.dtype == expected.dtype and np.array_equal(first, expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "nih")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "decode.md")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    paths = sorted((args.root / "images").glob("*.png"))
    if not paths:
        sys.exit(f"no PNGs in {args.root / 'images'}")
    blobs = [p.read_bytes() for p in paths]
    modes = {}
    for blob in blobs:
        mode = Image.open(io.BytesIO(blob)).mode
        modes[mode] = modes.get(mode, 0) + 1
    cases = support_cases()
    lines = [
        "# PNG decode benchmark",
        "",
        f"- command: `{' '.join(['python', *sys.argv])}`",
        f"- machine: {os.cpu_count()} cores (`nproc` {len(os.sched_getaffinity(0))}), {cpu_model()}; "
        f"Python {platform.python_version()}, OpenCV {cv2.__version__}, Pillow {Image.__version__}, "
        f"pyspng {pyspng.__version__}",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; one thread, files already in memory; "
        "taken while other jobs shared the machine (ratios matter, not absolute rates)",
        f"- data: {len(paths)} real NIH PNGs from {args.root / 'images'} (modes: "
        + ", ".join(f"{m} {n}" for m, n in sorted(modes.items()))
        + f"), {sum(map(len, blobs)) / len(blobs) / 1024:.0f} KiB average",
        "",
        "Columns after the rates: does the decoder's raw output hold the exact gray content of that PNG kind.",
        "",
        f"| decoder | images/s wall (best of {args.rounds}) | images/s per CPU-second (best) | {' | '.join(cases)} |",
        "|---|---|---|" + "---|" * len(cases),
    ]
    read_gray_name = f"cxrmtl read_gray (order {' > '.join(PNG_DECODERS)}; reads the files too)"
    runners = {name: decode_all(decode, blobs) for name, decode in DECODERS.items()}
    runners[read_gray_name] = read_all(paths)
    rates = time_all(runners, args.rounds)
    checks = {**DECODERS, read_gray_name: read_gray_bytes}
    complete = []
    for name, (wall, cpu) in rates.items():
        handled = [handles(checks[name], *case) for case in cases.values()]
        lines.append(f"| {name} | {wall:.1f} | {cpu:.1f} | {' | '.join('yes' if h else '**no**' for h in handled)} |")
        if all(handled) and name in DECODERS:
            complete.append((cpu, name))
    fastest = max(rates, key=lambda name: rates[name][1] if name in DECODERS else 0.0)
    best_complete = max(complete)[1] if complete else "none"
    lines += [
        "",
        f"Fastest raw decoder per CPU-second: {fastest}. Fastest that handles every kind: {best_complete}. "
        f"read_gray's PNG order is {' > '.join(PNG_DECODERS)}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
