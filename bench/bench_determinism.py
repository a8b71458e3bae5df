"""CPU cost of `train.deterministic` and of the per-step seeded RNG fork, side by side in one run.

For each backbone of the shipped configs (resnet18 @ 128 px as in the CPU demo, densenet121 @ 224 px as in the NIH
configs) it times the same training step (forward, BCE over the 14 findings, backward, AdamW) with
``torch.use_deterministic_algorithms(True)`` + cuDNN flags as ``train.deterministic: true`` sets them, and with them
off (the baseline a user would otherwise pick), interleaved round by round (median reported). It also times
``seeded_rng`` (the fork of torch's default generator around each step's forward) against doing nothing.

    python bench/bench_determinism.py [--steps 3] [--rounds 3] [--batch 8] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)

from cxrmtl.config import Config, apply_overrides
from cxrmtl.runs.build import build_model, build_tasks_for
from cxrmtl.train.process import apply, seeded_rng, training_process_state

CASES = (("resnet18", 128), ("densenet121", 224))


def step_seconds(model: torch.nn.Module, batch: torch.Tensor, target: torch.Tensor, steps: int) -> float:
    """Seconds per training step (one warm-up step first)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def one() -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch)["findings"], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    one()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - start) / steps


def time_case(backbone: str, size: int, args: argparse.Namespace) -> tuple[float, float]:
    cfg = apply_overrides(Config(), [f"model.backbone={backbone}", f"data.image_size={size}",
                                     "model.channels_last=false", "tasks.specs=[findings]"])
    tasks = build_tasks_for(cfg, pos_weight=None)
    with seeded_rng(0):
        model = build_model(cfg, tasks).train()
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(args.batch, 1, size, size, generator=gen)
    target = (torch.rand(args.batch, 14, generator=gen) < 0.2).float()
    timings: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for deterministic in (True, False):
            with training_process_state(cfg.train):
                apply(apply_overrides(cfg, [f"train.deterministic={str(deterministic).lower()}"]).train)
                timings[deterministic].append(step_seconds(model, batch, target, args.steps))
    return statistics.median(timings[True]), statistics.median(timings[False])


def fork_cost(n: int = 20000) -> tuple[float, float]:
    """Microseconds per step for seeded_rng vs an empty block."""
    start = time.perf_counter()
    for i in range(n):
        with seeded_rng(i):
            pass
    forked = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for _ in range(n):
        pass
    return forked * 1e6, (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [(backbone, size, *time_case(backbone, size, args)) for backbone, size in CASES]
    table = render(rows, fork_cost(), args)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


def render(rows: list[tuple], fork: tuple[float, float], args: argparse.Namespace) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Deterministic mode on CPU",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`  ",
        f"Machine: {os.cpu_count()} cores (`nproc`), {cpu_model()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), batch {args.batch}, median of {args.rounds} interleaved rounds of {args.steps} "
        f"steps; {now}. Shared machine: compare the ratio column.",
        "",
        "| backbone | px | s/step deterministic | s/step not deterministic | deterministic / not |",
        "|---|---|---|---|---|",
    ]
    for backbone, size, det, free in rows:
        lines.append(f"| {backbone} | {size} | {det:.3f} | {free:.3f} | {det / free:.3f} |")
    lines += ["", f"`seeded_rng` fork per step: {fork[0]:.1f} µs (empty block: {fork[1]:.2f} µs)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
