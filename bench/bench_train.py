"""CPU training throughput (images/s) of the engine's train_step vs a bare PyTorch step, side by side, one run.

For each config (the CPU demo: resnet18 @ 128 px; CheXNet-like: densenet121 @ 224 px) it times

- ``engine``: ``Trainer.train_step`` on loader batches (device augmentation, 5 tasks with masks, weighting,
  grad clipping, scheduler), with contiguous and with channels_last memory format, and
- ``bare``: the same network and batch with a minimal step (normalise, forward, findings BCE, backward, AdamW),

and prints a markdown table (command, machine, date). Numbers on a shared machine are noisy: compare ratios.

    python bench/bench_train.py [--steps 2] [--rounds 3] [--batch 8] [--threads 1] [--out bench/results/train.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from PIL import Image

from cxrmtl.config import apply_overrides, load_config
from cxrmtl.train.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
CASES = (
    ("demo_phantom.yaml", 128, []),
    ("nih_densenet121_224.yaml", 224, ["model.pretrained=false", "train.ema_decay=0"]),
)
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def write_folder(root: Path, *, n: int, size: int) -> Path:
    """A small NIH-layout folder of random images (throughput does not depend on content)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    lines, names = [HEADER], []
    for i in range(n):
        name = f"{i + 1:08d}_000.png"
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / "images" / name)
        label = ("No Finding", "Effusion", "Mass|Nodule")[i % 3]
        sex, view = "MF"[i % 2], ("PA", "AP")[i % 2]
        lines.append(f"{name},{label},0,{i + 1},{20 + i % 60},{sex},{view},{size},{size},0.1,0.1")
        names.append(name)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(names[: n - 8]))
    (root / "test_list.txt").write_text("\n".join(names[n - 8 :]))
    return root


def set_channels_last(trainer: Trainer, on: bool) -> None:
    """Switch the trainer's memory format (model and input batches)."""
    trainer.channels_last = on
    trainer.model.to(memory_format=torch.channels_last if on else torch.contiguous_format)


def interleaved(trainer: Trainer, args: argparse.Namespace) -> tuple[float, float, float]:
    """Median img/s of (engine channels_last, engine contiguous, bare) over rounds that alternate the three, so a
    load spike from other jobs hits all variants alike."""
    results: dict[str, list[float]] = {"on": [], "off": [], "bare": []}
    for _ in range(args.rounds):
        set_channels_last(trainer, True)
        results["on"].append(time_engine(trainer, args.steps))
        set_channels_last(trainer, False)
        results["off"].append(time_engine(trainer, args.steps))
        results["bare"].append(time_bare(trainer, args.steps))
    on, off, bare = (float(np.median(results[k])) for k in ("on", "off", "bare"))
    return on, off, bare


def time_engine(trainer: Trainer, steps: int) -> float:
    batches = iter(trainer.train_loader)  # a fresh epoch iterator: enough batches for warm-up + steps
    trainer.forward_model.train()
    trainer.train_step(next(batches))  # warm-up
    count, start = 0, time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        trainer.train_step(batch)
        count += batch["image"].shape[0]
    return count / (time.perf_counter() - start)


def time_bare(trainer: Trainer, steps: int) -> float:
    model = trainer.model.to(memory_format=torch.contiguous_format)  # a fresh optimizer: state does not matter here
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = iter(trainer.train_loader)
    model.train()

    def step(batch: dict) -> None:
        x = (batch["image"].float() / 255 - 0.5) / 0.25
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x)["findings"], batch["targets"]["findings"])
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(next(batches))
    count, start = 0, time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        step(batch)
        count += batch["image"].shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, size, extra in CASES:
            data = write_folder(Path(tmp) / f"nih{size}", n=args.batch * (args.steps + 2) + 16, size=size)
            cfg = apply_overrides(load_config(REPO / "configs" / name), [
                *extra, f"train.batch_size={args.batch}", "train.progress=false", "data.cache_workers=1",
                "data.val_fraction=0.05"])
            trainer = Trainer(cfg, data_root=data, out=Path(tmp) / f"run{size}")
            rows.append((name, cfg.model.backbone, size, args.batch, *interleaved(trainer, args)))
    table = render(rows, args)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


def render(rows: list[tuple], args: argparse.Namespace) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Training throughput on CPU",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`  ",
        f"Machine: {os.cpu_count()} cores (`nproc`), {cpu_model()}, torch {torch.__version__}, "
        f"{args.threads} thread(s); {now}. The machine was shared with other jobs: compare the ratio column.",
        "",
        "| config | backbone | px | batch | engine img/s (channels_last) | engine img/s (contiguous) "
        "| bare step img/s (contiguous) | best engine / bare |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, backbone, size, batch, cl_on, cl_off, bare in rows:
        lines.append(f"| {name} | {backbone} | {size} | {batch} | {cl_on:.2f} | {cl_off:.2f} | {bare:.2f} "
                     f"| {max(cl_on, cl_off) / bare:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
