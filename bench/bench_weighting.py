"""Benchmark: cost of each task-weighting method per training step, against ``equal`` weighting, in one run.

    python bench/bench_weighting.py [--backbone resnet18] [--size 128] [--batch 16] [--steps 3] [--repeats 2]
                                    [--threads 1] [--out bench/results/weighting.md]

One training step = forward of the MultiTaskNet on a random batch with the five tasks (findings, abnormal, age,
sex, view), the task losses, ``Weighting.backward`` and an AdamW step. Loss-weighting methods need one backward;
gradient methods (gradnorm, pcgrad, cagrad) one per task, so with backward ~2x forward they cost ~(1 + 2T) / 3 x
``equal`` (the forward is shared). Methods run interleaved ``--repeats`` times after one warm-up step each and the
best time counts (the machine is shared). Prints a markdown table; ``--out`` also writes it. The defaults take ~3.5
min of CPU; ``--size 64 --batch 8`` is a quick check.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def machine() -> str:
    """nproc, CPU model, load average and date: what a reader needs to weigh the numbers."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, StopIteration):
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{os.cpu_count()} cores (nproc), {model}, load average {load} (1/5/15 min), {date}"


def make_batch(batch: int, size: int) -> tuple:
    import torch

    g = torch.Generator().manual_seed(0)
    findings = (torch.rand(batch, 14, generator=g) > 0.9).float()
    targets = {
        "findings": findings,
        "abnormal": findings.amax(1),
        "age": torch.randint(20, 90, (batch,), generator=g).float(),
        "sex": torch.randint(0, 2, (batch,), generator=g).float(),
        "view": torch.randint(0, 2, (batch,), generator=g).float(),
    }
    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in targets.items()}
    return torch.randn(batch, 1, size, size, generator=g), targets, masks


class Runner:
    """A model, optimizer and weighting for one method; ``step()`` is one timed training step."""

    def __init__(self, method: str, *, backbone: str, batch: tuple) -> None:
        import torch

        from cxrmtl.models import MultiTaskNet
        from cxrmtl.tasks import build_tasks
        from cxrmtl.train.weighting import build_weighting

        torch.manual_seed(0)
        self.tasks = build_tasks(["findings", "abnormal", "age", "sex", "view"])
        self.model = MultiTaskNet(backbone=backbone, tasks=self.tasks)
        self.weighting = build_weighting(method, task_names=[t.name for t in self.tasks])
        params = [*self.model.parameters(), *self.weighting.parameters()]
        self.opt = torch.optim.AdamW(params, lr=1e-4)
        self.x, self.targets, self.masks = batch

    def step(self) -> float:
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        out = self.model(self.x)
        losses = {t.name: t.loss(out[t.name], *t.select(self.targets, self.masks)) for t in self.tasks}
        self.weighting.backward(
            losses, shared_params=self.model.shared_parameters(), all_params=list(self.model.parameters())
        )
        self.opt.step()
        return time.perf_counter() - start


def run(args: argparse.Namespace) -> str:
    import torch

    from cxrmtl.train.weighting import WEIGHTINGS

    torch.set_num_threads(args.threads)
    batch = make_batch(args.batch, args.size)
    methods = [m for m in WEIGHTINGS if m != "static"]  # static = equal with other numbers
    runners = {m: Runner(m, backbone=args.backbone, batch=batch) for m in methods}
    for r in runners.values():
        r.step()  # warm-up: allocator, lazy imports
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(args.repeats):
        for m, r in runners.items():
            best[m] = min(best[m], sum(r.step() for _ in range(args.steps)) / args.steps)
    base = best["equal"]
    lines = [
        f"Command: `python bench/bench_weighting.py --backbone {args.backbone} --size {args.size} --batch {args.batch}"
        f" --steps {args.steps} --repeats {args.repeats} --threads {args.threads}`",
        "",
        f"Machine: {machine()}; torch {torch.__version__}, {args.threads} thread(s). Taken under load from other "
        "jobs: the ratio column is the number to use.",
        "",
        f"5 tasks, {args.backbone} @ {args.size} px, batch {args.batch}, CPU fp32, best of {args.repeats} x "
        f"{args.steps} steps.",
        "",
        "| method | per-task backward | s / step | images / s | x equal |",
        "|---|---|---|---|---|",
    ]
    for m in methods:
        per_task = "yes" if WEIGHTINGS[m].needs_per_task_grads else "no"
        lines.append(f"| {m} | {per_task} | {best[m]:.3f} | {args.batch / best[m]:.1f} | {best[m] / base:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    table = run(args)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Task weighting cost per training step\n\n" + table)


if __name__ == "__main__":
    main()
