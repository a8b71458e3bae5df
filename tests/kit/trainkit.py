"""Helpers for the training-engine tests: a tiny NIH-layout folder, a tiny config, CLI subprocess environment.

The folder is written here (48 PNGs of 32 x 32 px, 24 patients) rather than with the phantom so these tests stay
fast and independent of its renderer. The images carry a learnable signal: brightness follows "Effusion", the left
half follows "Cardiomegaly", so a few steps move the loss.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cxrmtl.config import Config, apply_overrides

REPO = Path(__file__).resolve().parents[2]
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
LABEL_CHOICES = ("No Finding", "Effusion", "Cardiomegaly", "Effusion|Cardiomegaly", "Atelectasis", "Hernia")


def write_tiny_nih(root: Path, *, patients: int = 24, per_patient: int = 2, size: int = 32, seed: int = 0) -> Path:
    """A minimal NIH-layout folder: Data_Entry_2017_v2020.csv, the two split lists, images/*.png."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines, names = [HEADER], []
    for pid in range(1, patients + 1):
        sex, view = rng.choice(["M", "F", ""], p=[0.45, 0.45, 0.1]), rng.choice(["PA", "AP"])  # "" -> masked
        for follow in range(per_patient):
            name = f"{pid:08d}_{follow:03d}.png"
            text = str(rng.choice(LABEL_CHOICES))
            age = str(int(rng.integers(20, 80)))
            pixels = rng.normal(100, 20, (size, size))
            pixels += 60 * ("Effusion" in text)
            pixels[:, : size // 2] += 50 * ("Cardiomegaly" in text)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / "images" / name)
            lines.append(f"{name},{text},{follow},{pid},{age},{sex},{view},{size},{size},0.143,0.143")
            names.append(name)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    cut = per_patient * (patients * 3 // 4)  # first 3/4 of the patients: train_val, the rest: test
    (root / "train_val_list.txt").write_text("\n".join(names[:cut]))
    (root / "test_list.txt").write_text("\n".join(names[cut:]))
    return root


def tiny_config(*overrides: str) -> Config:
    """A config that trains in about a second on one CPU thread (test_convnext: LayerNorm, no BatchNorm)."""
    base = [
        "name=tiny", "seed=3", "data.image_size=32", "data.cache_workers=1", "data.val_fraction=0.25",
        "model.backbone=test_convnext",
        "model.channels_last=false", "tasks.specs=[findings, abnormal, age, sex, view]", "optim.lr=0.003",
        "optim.warmup_steps=2", "train.epochs=2", "train.batch_size=4", "train.eval_batch_size=8",
        "train.checkpoint_every=3", "train.progress=false", "train.log_every=1", "train.grad_norm_every=1",
        "augment.rotate_deg=5", "train.amp=off",  # fp32: the same numbers on CPUs with and without native bf16
    ]
    return apply_overrides(Config(), [*base, *overrides])


def cli_env() -> dict[str, str]:
    """Environment for `python -m cxrmtl` subprocesses: the source tree importable, one thread each."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def write_config(path: Path, cfg: Config) -> Path:
    from cxrmtl.config import dump_config

    path.write_text(dump_config(cfg))
    return path


def run_cli(args: list[str], *, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxrmtl", *args], env=cli_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
