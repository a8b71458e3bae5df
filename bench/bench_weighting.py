"""Benchmark: cost of each task-weighting method per training step, against ``equal`` weighting, in one run.

    python bench/bench_weighting.py [--backbone resnet18] [--size 128] [--batch 16] [--repeats 4]
                                    [--threads 1] [--out bench/results/weighting.md]

One training step = forward of the MultiTaskNet on a random batch with the five tasks (findings, abnormal, age,
sex, view), the task losses, ``Weighting.backward`` and an AdamW step, as the training loop does it (GradNorm gets
the backbone output through the same forward hook). Loss weighting and GradNorm need one backward through the
backbone (GradNorm adds one backward per task through the heads only); gradient surgery (pcgrad, cagrad) needs one
per task, so with backward ~2x forward it costs ~(1 + 2T) / 3 x ``equal`` (the forward is shared). Every method runs
one warm-up step, then ``--repeats`` rounds of one step per method, interleaved so that load from other jobs hits
all methods alike; the fastest step of each counts. Prints a markdown table; ``--out`` also writes it. The defaults
take ~3 min of CPU (5 tasks, resnet18 @ 128 px, batch 16); ``--size 64 --batch 8`` is a quick check.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))


def machine() -> str:
    """nproc, CPU model, load average and date: what a reader needs to weigh the numbers."""
    from machine import cpu_model

    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{os.cpu_count()} cores (nproc), {cpu_model()}, load average {load} (1/5/15 min), {date}"


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
        self.features: list = []
        # As the loop does: the backbone output, for GradNorm's norms.
        if getattr(self.weighting, "needs_features", False):
            self.model.backbone.register_forward_hook(lambda m, i, out: self.features.append(out))
        params = [*self.model.parameters(), *self.weighting.parameters()]
        self.opt = torch.optim.AdamW(params, lr=1e-4, fused=True)  # as cxrmtl.train.optim builds it
        self.x, self.targets, self.masks = batch

    def step(self) -> tuple[float, float]:
        """(seconds for the whole step, seconds inside ``Weighting.backward``)."""
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        out = self.model(self.x)
        losses = {t.name: t.loss(out[t.name], *t.select(self.targets, self.masks)) for t in self.tasks}
        features = self.features.pop() if self.features else None
        mid = time.perf_counter()
        extra = {"features": features} if features is not None else {}
        self.weighting.backward(losses, shared_params=self.model.shared_parameters(),
                                all_params=list(self.model.parameters()), **extra)
        backward = time.perf_counter() - mid
        self.opt.step()
        return time.perf_counter() - start, backward


BACKBONE_PASSES = {"pcgrad": "T", "cagrad": "T"}  # backward passes through the backbone per step (others: 1)


def run(args: argparse.Namespace) -> str:
    import torch

    from cxrmtl.train.weighting import WEIGHTINGS

    torch.set_num_threads(args.threads)
    batch = make_batch(args.batch, args.size)
    methods = [m for m in WEIGHTINGS if m != "static"]  # static = equal with other numbers
    runners = {m: Runner(m, backbone=args.backbone, batch=batch) for m in methods}
    for r in runners.values():
        r.step()  # warm-up: allocator, lazy imports, the gradient buffer
    best = {m: (float("inf"), float("inf")) for m in methods}
    started = time.perf_counter()
    for _ in range(args.repeats):
        for m, r in runners.items():
            best[m] = min(best[m], r.step())
    wall = time.perf_counter() - started
    base = best["equal"][0]
    lines = [
        f"Command: `python bench/bench_weighting.py --backbone {args.backbone} --size {args.size} --batch {args.batch}"
        f" --repeats {args.repeats} --threads {args.threads}`",
        "",
        f"Machine: {machine()}; torch {torch.__version__}, {args.threads} thread(s). The machine is shared: the "
        "ratio column is the number to use.",
        "",
        f"5 tasks (T = 5), {args.backbone} @ {args.size} px, batch {args.batch}, CPU fp32, fastest of {args.repeats} "
        f"interleaved steps per method ({wall:.0f} s for the timed rounds).",
        "",
        "| method | backbone backward passes | s / step | of which Weighting.backward | images / s | x equal |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        total, backward = best[m]
        lines.append(f"| {m} | {BACKBONE_PASSES.get(m, '1')} | {total:.3f} | {backward:.3f} | "
                     f"{args.batch / total:.1f} | {total / base:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=4)
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
