"""Distributed training: 2 gloo processes on CPU started by torchrun end with identical weights on both ranks, and
match one process with the same global batch within float tolerance.

Why the comparison holds: the backbone is timm's ``test_convnext`` (LayerNorm, no BatchNorm, so per-rank batch
statistics play no part), augmentation is off (its random draws are per rank), and the tasks used have no
missing labels (each rank's masked mean then averages to the global mean). The loader shards a shared seeded
permutation as ``perm[rank::world]``, so the union of the two ranks' batch k is the single process's batch k.
What remains is float summation order, hence a tolerance rather than equality across world sizes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainkit import REPO, cli_env, tiny_config, write_config

from cxrmtl.runs.checkpoint import load_checkpoint
from cxrmtl.train.loop import train

DDP_OVERRIDES = ("tasks.specs=[findings, abnormal, age, view]", "augment.enabled=false", "train.epochs=1",
                 "train.batch_size=4", "train.checkpoint_every=0", "train.log_every=2")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _torchrun(cfg_path: Path, data: Path, cache: Path, out: Path) -> subprocess.CompletedProcess:
    """torchrun with an explicit free rendezvous port on 127.0.0.1 (no clash with parallel test workers)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "-m", "cxrmtl",
           "train", str(cfg_path), "--data", str(data), "--out", str(out), "--cache", str(cache), "--device", "cpu"]
    env = cli_env()
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # keep gloo on loopback
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["equal", "pcgrad"])
def test_two_gloo_ranks_match_one_process(method: str, tiny_nih: Path, tiny_cache: Path, tmp_path: Path) -> None:
    cfg = tiny_config(*DDP_OVERRIDES, f"weighting.method={method}")
    cfg_path = write_config(tmp_path / "cfg.yaml", cfg)
    result = _torchrun(cfg_path, tiny_nih, tiny_cache, tmp_path / "ddp")
    assert result.returncode == 0, "\n".join(line for line in result.stderr.splitlines() if "rror" in line)[-4000:]
    records = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    end = records[-1]
    assert end["event"] == "end" and end["world_size"] == 2
    assert end["max_rank_divergence"] == 0.0, "both ranks must hold identical weights"
    epochs = [r for r in records if r.get("event") == "epoch"]
    assert len(epochs) == 1 and all(r["val/findings/n_labelled"] == 8 for r in epochs), "val gathered once per row"

    single = train(cfg, data_root=tiny_nih, out=tmp_path / "single", cache_dir=tiny_cache, device="cpu")
    assert single.steps == end["step"] == 7
    ddp_w = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["model"]
    one_w = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["model"]
    for name, want in one_w.items():
        if want.dtype.is_floating_point:
            torch.testing.assert_close(ddp_w[name], want, rtol=1e-3, atol=2e-4, msg=lambda m, n=name: f"{n}: {m}")
