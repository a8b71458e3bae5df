"""Benchmark: the reading-room simulation (heap + incremental worklist) vs re-sorting the worklist at every decision.

    python bench/bench_triage.py [--days 20] [--naive-days 3] [--out bench/results/triage.md]

Both run the default room (labels.TRIAGE_SIM_*: ~860 studies a day, 3 policies) on the same synthetic pool (400
images, 14 findings, AUROC ~0.85). The baseline is what one writes first: at every decision, sort the waiting
studies with ``order_worklist`` and take the head. Both give identical report times (checked here on the naive
days). Target (issue 9): 20 days x 3 policies in well under 2 s. Prints a markdown table; ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from machine import cpu_model  # noqa: E402

from cxrmtl import labels as L  # noqa: E402
from cxrmtl.triage.simulate import (  # noqa: E402
    SimulationOptions,
    draw_day,
    pool_from_arrays,
    resolve_upper_limit,
    simulate_queue,
)
from cxrmtl.triage.worklist import POLICIES, QueuedStudy, order_worklist  # noqa: E402


def synthetic_pool(n: int = 400, seed: int = 0) -> object:
    rng = np.random.default_rng(seed)
    truth = rng.random((n, len(L.FINDINGS))) < 0.08
    probs = 1 / (1 + np.exp(-(rng.normal(size=truth.shape) + 1.47 * truth - 2)))
    return pool_from_arrays(np.arange(n).astype(str), probs, L.FINDINGS, truth, thresholds=dict.fromkeys(L.FINDINGS,
                                                                                                          0.25))


def naive_queue(arrivals: np.ndarray, urgency: np.ndarray, durations: np.ndarray, *, readers: int, policy: str,
                limit: float | None) -> np.ndarray:
    """Report times with a full sort of the waiting list at every decision (the obvious implementation)."""
    p = POLICIES[policy]
    limit = limit if p.upper_limit else None
    n, free, waiting, nxt = len(arrivals), [0.0] * readers, [], 0
    end = np.empty(n)
    done = 0
    while done < n:
        r = int(np.argmin(free))
        t = free[r]
        while nxt < n and arrivals[nxt] <= t:
            waiting.append(QueuedStudy(str(nxt), arrivals[nxt], urgency[nxt] if p.use_urgency else 0.0))
            nxt += 1
        if not waiting:
            free[r] = arrivals[nxt]
            continue
        head = order_worklist(waiting, now=t, upper_limit_minutes=limit)[0]
        waiting.remove(head)
        i = int(head.id)
        end[i] = t + durations[i]
        free[r] = end[i]
        done += 1
    return end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=L.TRIAGE_SIM_SEEDS)
    ap.add_argument("--naive-days", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    pool, opts = synthetic_pool(), SimulationOptions()
    limit = resolve_upper_limit(pool, opts)
    days = [draw_day(pool, opts, np.random.default_rng([0, s])) for s in range(args.days)]
    start = time.perf_counter()
    fast = {}
    for s, d in enumerate(days):
        for p in opts.policies:
            fast[s, p] = simulate_queue(d.arrivals, pool.urgency[d.studies], d.durations, readers=opts.readers,
                                        policy_name=p, upper_limit_minutes=limit).end
    heap_s = time.perf_counter() - start
    start = time.perf_counter()
    for s, d in enumerate(days[: args.naive_days]):
        for p in opts.policies:
            end = naive_queue(d.arrivals, pool.urgency[d.studies], d.durations, readers=opts.readers, policy=p,
                              limit=limit)
            np.testing.assert_allclose(end, fast[s, p])
    naive_s = (time.perf_counter() - start) * args.days / args.naive_days
    studies = np.mean([len(d.arrivals) for d in days])
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        f"Reading-room simulation, {args.days} days x {len(opts.policies)} policies, {studies:.0f} studies a day "
        f"(default room); {os.cpu_count()} cores, {cpu_model()}, load {load}, "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        "| implementation | seconds | studies/s | speed-up |",
        "|---|---|---|---|",
        f"| re-sort the worklist at each decision (extrapolated from {args.naive_days} days) | {naive_s:.2f} | "
        f"{studies * args.days * len(opts.policies) / naive_s:,.0f} | 1.0x |",
        f"| heap + incremental worklist (`simulate_queue`) | {heap_s:.2f} | "
        f"{studies * args.days * len(opts.policies) / heap_s:,.0f} | {naive_s / heap_s:.1f}x |",
        "",
        "Identical report times on the compared days (asserted).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
