"""fp16 mixed precision with loss scaling, on CPU (torch's autocast and GradScaler both accept "cpu"), for every
weighting method: the loop's real training step, and the weighting/GradScaler contract on an overflowing step.

The weighting methods run their own backward passes, so the loop never hands a loss to ``scaler.scale(loss)``;
it takes the scale from ``scaler.scale`` itself (which also creates the state ``unscale_`` needs: calling
``unscale_`` without it was the first-step crash of issue 11) and passes it as ``grad_scale``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from trainkit import tiny_config

from cxrmtl.runs.checkpoint import load_checkpoint
from cxrmtl.train import loop
from cxrmtl.train.loop import native_bf16, resolve_amp, train
from cxrmtl.train.weighting import WEIGHTINGS, build_weighting

NAMES = ("a", "b", "c")
INIT_SCALE = 2.0**16  # GradScaler's default init_scale


def _kwargs(name: str) -> dict:
    return {"weights": {"a": 2.0}} if name == "static" else {}


@pytest.mark.parametrize("method", sorted(WEIGHTINGS))
def test_fp16_training_steps_on_cpu_for_every_method(method: str, tiny_nih: Path, tiny_cache: Path,
                                                     tmp_path: Path) -> None:
    extra = ["weighting.weights.age=0.5"] if method == "static" else []
    cfg = tiny_config("train.amp=fp16", f"weighting.method={method}", "train.epochs=1", "train.max_steps=4", *extra)
    summary = train(cfg, data_root=tiny_nih, out=tmp_path / "run", cache_dir=tiny_cache, device="cpu")
    assert summary.steps == 4
    steps = [r for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())
             if r.get("event") == "step"]
    assert len(steps) == 4
    for record in steps:
        losses = [v for k, v in record.items() if k.startswith("loss/")]
        assert len(losses) == 5 and all(math.isfinite(v) for v in losses), record
    scaler = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["scaler"]
    # Every step went through unscale_/step/update: it either counted as a good step (growth tracker) or found an
    # overflow and halved the scale. At least one step was applied.
    backoffs = math.log2(INIT_SCALE / scaler["scale"])
    assert backoffs == int(backoffs) and backoffs + scaler["_growth_tracker"] == 4, scaler
    assert scaler["_growth_tracker"] >= 1


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 6)
        self.heads = nn.ModuleDict({n: nn.Linear(6, 1) for n in NAMES})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.features = torch.tanh(self.shared(x))
        return {n: head(self.features).squeeze(1) for n, head in self.heads.items()}


def _fp16_step(model: Toy, weighting: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """The loop's order: forward under fp16 autocast, losses in fp32, scaled weighting backward, unscale, step."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, generator=g)
    ys = {n: torch.randn(8, generator=g) for n in NAMES}
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(x)
    losses = {n: ((out[n].float() - ys[n]) ** 2).mean() for n in NAMES}
    scale = float(scaler.scale(torch.ones(())))
    weighting.backward(losses, shared_params=list(model.shared.parameters()), all_params=list(model.parameters()),
                       grad_scale=scale, features=model.features)
    scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()


@pytest.mark.parametrize("method", sorted(WEIGHTINGS))
def test_an_overflowing_fp16_step_is_skipped_and_the_next_one_applies(method: str) -> None:
    """Scale 2^40 overflows fp16 gradients: the scaler finds the infs in the weighting's gradients, skips the step
    (weights and the weighting's own state unchanged) and backs off; at a sane scale the step applies."""
    torch.manual_seed(0)
    model = Toy()
    weighting = build_weighting(method, task_names=NAMES, **_kwargs(method))
    opt = torch.optim.AdamW([*model.parameters(), *weighting.parameters()], lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in weighting.state_dict().items()}
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    _fp16_step(model, weighting, opt, scaler)
    assert scaler.get_scale() == 2.0**39
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    for key, value in weighting.state_dict().items():
        if key != "step":  # PCGrad's order counter advances every step, by design
            torch.testing.assert_close(value, state[key], rtol=0, atol=0, equal_nan=True, msg=key)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _fp16_step(model, weighting, opt, scaler)
    assert scaler.get_scale() == 2.0**10  # no overflow: no back-off
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [
    (True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, None)])
def test_auto_amp_is_bf16_only_on_cpus_that_compute_it_natively(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool,
                                                                amx: bool, expected: torch.dtype | None) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    cpu = torch.device("cpu")
    assert native_bf16(cpu) is (expected is not None)
    assert resolve_amp("auto", cpu) is expected
    # explicit modes are taken as written, whatever the CPU
    assert resolve_amp("off", cpu) is None and resolve_amp("bf16", cpu) is torch.bfloat16


def test_auto_amp_survives_a_torch_without_the_cpu_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    for probe in loop._CPU_BF16_PROBES:
        monkeypatch.delattr(torch.cpu, probe, raising=False)
    assert resolve_amp("auto", torch.device("cpu")) is None
