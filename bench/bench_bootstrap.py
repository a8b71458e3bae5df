"""Benchmark: patient-clustered bootstrap of AUROC + AUPRC, vectorised (cxrmtl.eval.bootstrap) vs a naive loop.

The naive baseline is what one writes first: per resample, draw patients with replacement, expand them to their
image rows and call scikit-learn's roc_auc_score and average_precision_score per finding. It is timed on a few
resamples and extrapolated linearly to the full count (its cost per resample is constant). Both use the same draws,
and the script checks that they agree.

Data: the official NIH test split (25,596 images, 2,797 patients, real labels) when ../shared/data/nih is present,
synthetic data of the same size otherwise; scores are synthetic (label + noise, rounded to 3 decimals so ties exist).

    python bench/bench_bootstrap.py [--resamples 1000] [--naive 5] [--out bench/results/bootstrap.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from cxrmtl import labels as L
from cxrmtl.eval.bootstrap import PatientResampler, bootstrap_metrics

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih"


def load_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame, str]:
    """(scores, labels, patient_ids, metadata, description) of the size of the official test split."""
    rng = np.random.default_rng(seed)
    if (SHARED / "Data_Entry_2017_v2020.csv.gz").is_file():
        from cxrmtl.data.nih import load_index

        index = load_index(SHARED, find_images=False)
        rows = index.rows("test")
        y = index.findings[rows].astype(np.int8)
        table = index.table.iloc[rows].reset_index(drop=True)
        pid = table["patient_id"].to_numpy()
        meta = table[["image", "sex", "age", "view"]]
        source = "real NIH official test split labels, patients and metadata"
    else:
        n, p = L.NIH_SPLIT_COUNTS["test"]
        pid = np.sort(rng.integers(0, p, n))
        y = (rng.random((n, L.NUM_FINDINGS)) < 0.05).astype(np.int8)
        meta = pd.DataFrame({"image": [f"{i:08d}.png" for i in range(n)], "sex": rng.integers(0, 2, n),
                             "age": rng.uniform(1, 95, n), "view": rng.integers(0, 2, n)})
        source = "synthetic labels and patients (../shared/data/nih absent)"
    scores = np.round(1 / (1 + np.exp(-(rng.normal(-2, 1, y.shape) + 1.2 * y))), 3).astype(np.float32)
    return scores, y, pid, meta, source


def full_evaluation(scores: np.ndarray, y: np.ndarray, pid: np.ndarray, meta: pd.DataFrame, n: int) -> float:
    """Seconds of evaluate_outputs on the findings (AUROC+AUPRC CIs, calibration, subgroups, expert labels)."""
    from cxrmtl.eval.evaluate import EvalOptions, SplitOutputs, TaskOutputs, evaluate_outputs
    from cxrmtl.eval.expert import load_google_labels

    expert_file = SHARED / L.GOOGLE_LABELS_NAME
    expert = load_google_labels(expert_file) if expert_file.is_file() else None
    task = TaskOutputs("findings", "multilabel", L.FINDINGS, scores.astype(np.float64), y.astype(np.float64),
                       np.ones(y.shape, bool))
    ev = SplitOutputs("test", meta["image"].to_numpy(), pid, meta[["sex", "age", "view"]], {"findings": task})
    start = time.perf_counter()
    evaluate_outputs(ev, expert=expert, options=EvalOptions(n_bootstrap=n))
    return time.perf_counter() - start


def naive(scores: np.ndarray, y: np.ndarray, resampler: PatientResampler, n: int) -> tuple[float, np.ndarray]:
    """Seconds per resample of the scikit-learn loop, and its AUROCs (n, K) on the resampler's first n draws."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    by_patient = [np.flatnonzero(resampler.inverse == p) for p in range(resampler.patients.size)]
    out = np.full((n, y.shape[1]), np.nan)
    start = time.perf_counter()
    for b in range(n):
        counts = resampler.counts[b]
        rows = np.concatenate([np.tile(by_patient[p], c) for p, c in enumerate(counts) if c])
        for k in range(y.shape[1]):
            yk, sk = y[rows, k], scores[rows, k]
            if 0 < yk.sum() < yk.size:
                out[b, k] = roc_auc_score(yk, sk)
                average_precision_score(yk, sk)
    return (time.perf_counter() - start) / n, out


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} cores (nproc), {cpu}, load average {load:.1f} at start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resamples", type=int, default=L.EVAL_BOOTSTRAP)
    parser.add_argument("--naive", type=int, default=5, help="resamples timed for the naive loop (extrapolated)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args()

    scores, y, pid, meta, source = load_problem()
    resampler = PatientResampler(pid, n_resamples=args.resamples, seed=0)
    start = time.perf_counter()
    res = bootstrap_metrics(scores, y, resampler=resampler)
    fast = time.perf_counter() - start
    per_naive, naive_auc = naive(scores, y, resampler, args.naive)
    diff = np.nanmax(np.abs(naive_auc - res["auroc"].samples[: args.naive]))
    naive_total = per_naive * args.resamples
    full = full_evaluation(scores, y, pid, meta, args.resamples)
    command = "OMP_NUM_THREADS=1 " * (os.environ.get("OMP_NUM_THREADS") == "1") + "python " + " ".join(sys.argv)
    lines = [
        "# Bootstrap benchmark (AUROC + AUPRC, patient-clustered)",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}; numbers taken under load from other jobs, compare the ratio",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; commit: {_commit()}",
        f"- data: {len(pid):,} images x {y.shape[1]} findings, {resampler.patients.size:,} patients ({source})",
        "",
        "| method | resamples | seconds | seconds / resample | speed-up |",
        "|---|---|---|---|---|",
        f"| naive sklearn loop (timed on {args.naive}, extrapolated) | {args.resamples} | {naive_total:.1f} | "
        f"{per_naive:.3f} | 1.0x |",
        f"| vectorised (cxrmtl.eval.bootstrap) | {args.resamples} | {fast:.1f} | {fast / args.resamples:.4f} | "
        f"{naive_total / fast:.1f}x |",
        "",
        f"Max |AUROC difference| between the two on the same draws: {diff:.2e}.",
        "",
        f"Whole numeric evaluation of the findings (`evaluate_outputs`: AUROC + AUPRC CIs, mean CI, calibration, "
        f"8 subgroups x 14 findings with CIs, expert labels), {args.resamples} resamples: {full:.1f} s.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    main()
