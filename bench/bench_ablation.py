"""The multitask ablation at a real budget on the phantom (issue 11 §3), and its data-efficiency conditions.

Does sharing one network with the auxiliary tasks (and with the other findings) help the findings, and does it help
most where a finding has few positive labels? Three conditions on one phantom and one cache, 3 seeds, all 14
findings, every model scored with its final checkpoint after the same number of epochs (docs/ablation.md):

- ``full``: every label; multitask (findings + abnormal, age, sex, view; the recipe's static auxiliary weights 0.1)
  vs findings-only vs 14 single-task models, and the multitask model under each loss weighting as the method
  defines it (equal = plain sum, uncertainty, DWA, PCGrad, GradNorm);
- ``rare25`` / ``rare10``: the training positives of the rare findings (labels.RARE_FINDINGS) cut to 25 % / 10 %
  (masked, not flipped; val and test keep every label); multitask vs findings-only vs single-task models of the cut
  findings only (the other findings' single-task models do not depend on the cut).

The config is configs/demo_phantom.yaml (the demo recipe: auxiliary weights 0.1, no pos_weight, batch 64, lr 2e-3,
warm-up 20 %), read when the script runs, with BENCH_OVERRIDES (small backbone, 64 px, epochs).

Modes:
  pilot  trains the multitask model and one single-task model (--pilot-single, a rare finding) at each candidate
         budget (--epochs 8,16), one seed, two at a time; writes bench/results/ablation_pilot.md: validation AUROC per
         epoch with the plateau verdict (ablate.curves), seconds per run, and the predicted wall time of ``run``.
  run    the benchmark: ``cxrmtl ablate`` per condition (the full condition split in --parallel shards), then the
         comparisons; writes bench/results/ablation_{full,rare25,rare10}.md.

Usage:
  OMP_NUM_THREADS=1 python bench/bench_ablation.py pilot --workdir DIR [--epochs 6,12] [--pilot-single Hernia]
      [--single-epochs 6,12]
  OMP_NUM_THREADS=1 python bench/bench_ablation.py run --workdir DIR --epochs E [--seeds 3] [--parallel 2]
      [--conditions full,rare25,rare10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = REPO / "bench" / "results"
RECIPE = REPO / "configs" / "demo_phantom.yaml"

# On top of the demo recipe: a small backbone at 64 px so ~100 trainings fit about an hour on 2 CPU cores; a 20 %
# validation split (the demo's 10 % is ~110 images, whose per-epoch AUROC is too noisy to tell a plateau); no
# per-task gradient norms (log_every 0: 5 extra backward passes every 10 steps, measurement only); checkpoints at
# epoch ends only; one thread per process (two processes share the two cores).
BENCH_OVERRIDES: tuple[str, ...] = (
    "model.backbone=resnet10t", "data.image_size=64", "data.val_fraction=0.2", "train.log_every=0",
    "train.grad_norm_every=0", "train.checkpoint_every=0", "train.checkpoint_minutes=0", "train.cpu_threads=1",
    "train.progress=false",
)
# condition -> (rare fraction or None, extra `cxrmtl ablate` options)
CONDITIONS: dict[str, tuple[float | None, tuple[str, ...]]] = {
    "full": (None, ("--single", "all", "--weightings", "all")),
    "rare25": (0.25, ("--single", "rare")),
    "rare10": (0.10, ("--single", "rare")),
}
# Cost of a weighting's training step relative to "equal" (bench/results/weighting.md: 5 tasks, 1 thread), used only
# to predict the wall time from the pilot. "equal" is trained too: the recipe's static auxiliary weights make the
# multitask arm another weighting than the plain sum (docs/ablation.md).
WEIGHTING_COST: dict[str, float] = {"equal": 1.0, "uncertainty": 1.05, "dwa": 1.11, "gradnorm": 1.13, "pcgrad": 3.31}


def cli(args: Sequence[str], *, log: Path) -> tuple[float, float]:
    """Run ``python -m cxrmtl ARGS`` (source tree first, one thread) with its output in ``log``; (wall seconds, CPU
    seconds of the process). On a shared machine the CPU seconds are what the run costs when it has a core."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ cxrmtl {' '.join(map(str, args))}\n")
        fh.flush()
        proc = subprocess.Popen([sys.executable, "-m", "cxrmtl", *map(str, args)], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"cxrmtl {' '.join(map(str, args))} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def prepare(work: Path, *, patients: int, epochs: int) -> tuple[Path, Path, Path]:
    """The phantom (rendered at 128 px, reused when complete), its 64 px cache and the config; their paths."""
    from cxrmtl.config import dump_config, load_config

    work.mkdir(parents=True, exist_ok=True)
    phantom, cache = work / "phantom", work / "cache64"
    if not (phantom / "Data_Entry_2017.csv").is_file():
        cli(["phantom", phantom, "--patients", patients, "--size", 128, "--seed", 0, "--workers", 2, "--no-progress"],
            log=work / "prepare.log")
    if not (cache / "manifest.json").is_file():
        cli(["cache", "build", phantom, cache, "--size", 64, "--workers", 2, "--no-progress"], log=work / "prepare.log")
    cfg = load_config(RECIPE, [*BENCH_OVERRIDES, f"train.epochs={epochs}", "name=bench_ablation"])
    config = work / f"ablation_e{epochs}.yaml"
    config.write_text(f"# configs/demo_phantom.yaml + {' '.join(BENCH_OVERRIDES)} train.epochs={epochs}\n"
                      + dump_config(cfg))
    return phantom, cache, config


def header(argv: Sequence[str], *, started: float, wall: float | None, load: tuple[float, float]) -> str:
    from machine import cpu_model

    when = dt.datetime.fromtimestamp(started, dt.UTC)
    took = f"wall {wall / 60:.1f} min; " if wall is not None else ""
    return (f"Command: `OMP_NUM_THREADS=1 python bench/bench_ablation.py {' '.join(argv)}`\n\n"
            f"Machine: {os.cpu_count()} cores (`nproc`), {cpu_model()}; {when:%Y-%m-%d %H:%M} UTC; {took}"
            f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end (the machine is "
            "shared: times are pessimistic when other jobs run).\n\n"
            f"Config: `configs/demo_phantom.yaml` + `{' '.join(BENCH_OVERRIDES)}`; data: the built-in PHANTOM "
            "(synthetic ChestX-ray14, boosted prevalence).\n")


# ---------------------------------------------------------------------------------------------------------------
# pilot


def pilot(args: argparse.Namespace) -> None:
    from cxrmtl.ablate.curves import plateau_verdict, run_curve

    started, load0 = time.time(), os.getloadavg()[0]
    budgets = [int(e) for e in args.epochs.split(",")]
    single_budgets = [int(e) for e in args.single_epochs.split(",")] if args.single_epochs else budgets
    jobs = []
    for epochs in budgets:
        phantom, cache, config = prepare(args.workdir, patients=args.patients, epochs=epochs)
        arms = [("multitask", None)]
        if epochs in single_budgets:
            arms.append((f"single:{args.pilot_single}", f"[findings:{args.pilot_single}]"))
        for arm, specs in arms:
            out = args.workdir / "pilot" / f"{arm.replace(':', '-')}_e{epochs}"
            # as the harness builds a single-task variant: the auxiliary tasks' static weights go with them
            extra = ["--set", f"tasks.specs={specs}", "--set", "weighting.weights={}",
                     "--set", "train.select_metric=auto"] if specs else []
            jobs.append((arm, epochs, out, ["train", config, "--data", phantom, "--cache", cache, "--out", out,
                                            "--device", "cpu", "--no-progress", *extra]))

    def one(job: tuple) -> tuple:
        arm, epochs, out, argv = job
        timing = out / "pilot_seconds.json"  # a finished pilot run is reused with the times it was measured at
        if not timing.is_file():
            timing.write_text(json.dumps(cli(argv, log=args.workdir / "pilot.log")))
        return arm, epochs, out, tuple(json.loads(timing.read_text()))

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        done = list(pool.map(one, jobs))
    rows, seconds = [], {}
    for arm, epochs, out, (wall, cpu) in done:
        curve = run_curve(out / "log.jsonl")
        steps = sorted(curve)
        values = [sum(curve[s].values()) / len(curve[s]) if curve[s] else float("nan") for s in steps]
        verdict = plateau_verdict(values)
        seconds[(arm.split(":")[0], epochs)] = cpu
        rows.append(f"| {arm} | {epochs} | {steps[-1] if steps else 0} | "
                    f"{' '.join(f'{v:.3f}' for v in values)} | {verdict['verdict']} "
                    f"({_signed(verdict['gain_last_third'])}) | {wall:.0f} | {cpu:.0f} |")
    lines = ["# Ablation pilot: when does the validation AUROC stop rising, and what does a run cost?", "",
             header(sys.argv[1:], started=started, wall=None, load=(load0, os.getloadavg()[0])),
             f"One seed (0); {args.patients} phantom patients; runs {args.parallel} at a time, one thread each; a run "
             "finished by an earlier invocation is reused with the times measured then. Each row is its own run (the "
             "learning-rate schedule, warm-up 20 % then cosine, spans the run's own epochs).", "",
             "| run | epochs | steps | mean val AUROC at each epoch | plateau verdict (gain in last third) | "
             "wall s | CPU s |", "|---|---|---|---|---|---|---|", *rows, "",
             "## Predicted wall time of `run` (3 seeds, 2 processes)", "",
             "| epochs | multitask run CPU s | single-task run CPU s | CPU s: full / each cut condition | "
             "CPU s in all | wall min with 2 free cores |", "|---|---|---|---|---|---|"]
    both = [e for e in budgets if seconds.get(("multitask", e)) and seconds.get(("single", e))]
    ratio = sum(seconds[("single", e)] / seconds[("multitask", e)] for e in both) / len(both) if both else 1.0
    for epochs in budgets:
        mt, st = seconds.get(("multitask", epochs)), seconds.get(("single", epochs))
        if not mt:
            continue
        shown = f"{st:.0f}" if st else f"{mt * ratio:.0f} (est.: {ratio:.2f} x multitask, as measured)"
        full, cut = predicted_core_seconds(mt, st or mt * ratio, seeds=3)
        total = full + 2 * cut
        lines.append(f"| {epochs} | {mt:.0f} | {shown} | {full:.0f} / {cut:.0f} | {total:.0f} | "
                     f"{total / 2 / 60:.0f} |")
    lines += ["", "Prediction from the CPU seconds of the pilot's processes (what a run costs when it has a core to "
              "itself): findings-only costs a multitask run; weightings cost their step ratio from "
              "bench/results/weighting.md (uncertainty 1.05, DWA 1.11, GradNorm 1.13, PCGrad 3.31); full condition "
              "2 + 14 single + 5 weightings (plain equal too), each cut condition 2 + "
              f"{len(_rare())} single per seed; shards keep both processes busy (wall = CPU seconds / 2). Other "
              "jobs on the machine stretch the wall time by the share of the cores they take."]
    text = "\n".join(lines) + "\n"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ablation_pilot.md").write_text(text)
    print(text)


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _rare() -> tuple[str, ...]:
    from cxrmtl.labels import RARE_FINDINGS

    return RARE_FINDINGS


def predicted_core_seconds(multitask: float, single: float, *, seeds: int) -> tuple[float, float]:
    """CPU seconds of the full condition and of one cut condition, from one multitask and one single-task run's."""
    from cxrmtl.labels import NUM_FINDINGS

    full = 2 * multitask + NUM_FINDINGS * single + multitask * sum(WEIGHTING_COST.values())
    cut = 2 * multitask + len(_rare()) * single
    return seeds * full, seeds * cut


# ---------------------------------------------------------------------------------------------------------------
# run


def run(args: argparse.Namespace) -> None:
    started, load0 = time.time(), os.getloadavg()[0]
    phantom, cache, config = prepare(args.workdir, patients=args.patients, epochs=args.epochs)
    conditions = args.conditions.split(",")
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise SystemExit(f"--conditions: unknown {unknown}; choose from {', '.join(CONDITIONS)}")

    def argv(name: str) -> list:
        fraction, extra = CONDITIONS[name]
        cut = ["--rare-fraction", fraction] if fraction is not None else []
        return ["ablate", config, "--out", args.workdir / name, "--data", phantom, "--cache", cache, "--seeds",
                args.seeds, "--bootstrap", args.bootstrap, "--device", "cpu", *cut, *extra]

    # The full condition holds ~2/3 of the runs: split it over the processes; the cut conditions follow.
    queue = [(name, [*argv(name), "--shard", f"{k}/{args.parallel}"]) for name in conditions if name == "full"
             for k in range(1, args.parallel + 1)]
    queue += [(name, argv(name)) for name in conditions if name != "full"]
    times: dict[str, float] = {}

    def one(job: tuple) -> None:
        name, command = job
        times[name] = times.get(name, 0.0) + cli(command, log=args.workdir / f"{name}.log")[1]

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        list(pool.map(one, queue))
    if "full" in conditions:
        times["full"] += cli(argv("full"), log=args.workdir / "full.log")[1]  # all shards done: compare
    wall = time.time() - started
    top = header(sys.argv[1:], started=started, wall=wall, load=(load0, os.getloadavg()[0]))
    for name in conditions:
        result = json.loads((args.workdir / name / "ablation.json").read_text())
        body = (args.workdir / name / "ablation.md").read_text()
        note = (f"Condition `{name}`: {args.epochs} epoch(s) per model, seeds {result['seeds']}, "
                f"{len(result['runs'])} trainings; CPU time {times[name] / 60:.1f} min (sum over its processes).")
        text = f"# Ablation on the phantom: {name}\n\n{top}\n{note}\n\n" + body.split("\n", 1)[1]
        (args.results / f"ablation_{name}.md").write_text(text)
        print(f"written: {args.results / f'ablation_{name}.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("pilot", "run"))
    parser.add_argument("--workdir", type=Path, required=True, help="phantom, cache, configs and runs (reused)")
    parser.add_argument("--patients", type=int, default=500, help="phantom patients (500: ~2,000 images)")
    parser.add_argument("--epochs", default="8,16", help="pilot: candidate budgets; run: the budget (one number)")
    parser.add_argument("--pilot-single", default="Hernia", help="pilot: the single-task model's finding")
    parser.add_argument("--single-epochs", default="", help="pilot: budgets with a single-task run (default: all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=2, help="processes at once (one thread each)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the .md files go (bench/results)")
    args = parser.parse_args()
    if args.mode == "run":
        if not args.epochs.isdigit():
            raise SystemExit("--epochs: run takes one budget, e.g. --epochs 10")
        args.epochs = int(args.epochs)
        run(args)
    else:
        pilot(args)


if __name__ == "__main__":
    main()
