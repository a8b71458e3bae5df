"""Task weighting: every registered method on a toy network, what each one does on toy problems, AMP scaling,
checkpoint state, the exact fast forms (Gram-matrix PCGrad and CAGrad against straightforward references kept
here), and DDP (2 gloo processes on 127.0.0.1 must produce the single-process gradients)."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from cxrmtl.config import OptimConfig
from cxrmtl.errors import ConfigError
from cxrmtl.train.optim import build_optimizer
from cxrmtl.train.weighting import WEIGHTINGS, build_weighting

NAMES = ("a", "b", "c")


class Toy(nn.Module):
    """A shared layer and one scalar head per task: the smallest multitask network."""

    def __init__(self, names: tuple[str, ...] = NAMES) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 6)
        self.heads = nn.ModuleDict({n: nn.Linear(6, 1) for n in names})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.shared(x))
        self.features = h  # the shared representation (the loop takes it from a hook on the backbone)
        return {n: head(h).squeeze(1) for n, head in self.heads.items()}


def _data(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    # Task "b" is the negation of "a": their gradients on the shared layer conflict.
    base = x[:, 0] - x[:, 1]
    return x, {"a": base, "b": -base + 0.1 * x[:, 2], "c": x[:, 3] * 2}


def _losses(out: dict[str, torch.Tensor], ys: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: ((out[n] - ys[n]) ** 2).mean() for n in out}


def _kwargs(name: str) -> dict:
    return {"weights": {"a": 2.0}} if name == "static" else {}


def _step(model: Toy, weighting: nn.Module, x: torch.Tensor, ys: dict, **kw: object) -> dict[str, float]:
    model.zero_grad(set_to_none=True)
    for p in weighting.parameters():
        p.grad = None
    losses = _losses(model(x), ys)
    kw.setdefault("features", model.features)
    return weighting.backward(
        losses, shared_params=list(model.shared.parameters()), all_params=list(model.parameters()), **kw
    )


def _grads(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_every_method_fills_every_gradient_and_logs_weights(name: str) -> None:
    torch.manual_seed(0)
    model, (x, ys) = Toy(), _data()
    weighting = build_weighting(name, task_names=NAMES, **_kwargs(name))
    logs = _step(model, weighting, x, ys, with_grad_norms=True)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    for task in NAMES:
        assert math.isfinite(logs[f"weight/{task}"]) and logs[f"gradnorm/{task}"] > 0
    assert weighting.needs_per_task_grads == (name in {"pcgrad", "cagrad"})
    assert weighting.needs_features == (name == "gradnorm")


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_grad_scale_scales_gradients_but_not_logged_norms(name: str) -> None:
    """AMP: gradients come out multiplied by the loss scale (the scaler unscales them); logs stay unscaled."""
    torch.manual_seed(0)
    model, (x, ys) = Toy(), _data()
    logs1 = _step(model, build_weighting(name, task_names=NAMES, **_kwargs(name)), x, ys)
    g1 = _grads(model)
    logs2 = _step(model, build_weighting(name, task_names=NAMES, **_kwargs(name)), x, ys, grad_scale=1024.0)
    assert torch.allclose(_grads(model), g1 * 1024.0, rtol=1e-4, atol=1e-5)
    for key, value in logs1.items():
        assert logs2[key] == pytest.approx(value, rel=1e-4, abs=1e-7), key


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_state_dict_round_trip_resumes_identically(name: str) -> None:
    torch.manual_seed(0)
    model, (x, ys) = Toy(), _data()
    first = build_weighting(name, task_names=NAMES, **_kwargs(name))
    for epoch in range(3):
        _step(model, first, x, ys)
        first.end_epoch(epoch, {"a": 1.0 / (epoch + 1), "b": 1.0, "c": 0.5})
    second = build_weighting(name, task_names=NAMES, **_kwargs(name))
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    if not first.needs_per_task_grads:  # gradient surgery's weights are per step (the last step's coefficients)
        assert second.current_weights() == first.current_weights()
    _step(model, first, x, ys)
    g_first = _grads(model)
    _step(model, second, x, ys)
    assert torch.equal(_grads(model), g_first)
    assert second.current_weights() == first.current_weights()


def test_equal_and_static_weights_equal_a_manual_weighted_sum() -> None:
    torch.manual_seed(0)
    model, (x, ys) = Toy(), _data()
    _step(model, build_weighting("static", task_names=NAMES, weights={"a": 2.0, "c": 0.0}), x, ys)
    got = _grads(model)
    model.zero_grad()
    losses = _losses(model(x), ys)
    (2.0 * losses["a"] + losses["b"] + 0.0 * losses["c"]).backward()
    assert torch.allclose(got, _grads(model))


def _linear_problem(gradients: list[list[float]]) -> tuple[nn.Parameter, dict[str, torch.Tensor], tuple[str, ...]]:
    """Losses L_i = 100 + g_i . theta at theta = 0: task i's gradient is exactly g_i."""
    theta = nn.Parameter(torch.zeros(len(gradients[0])))
    names = tuple(f"t{i}" for i in range(len(gradients)))
    return theta, {n: 100 + theta @ torch.tensor(g) for n, g in zip(names, gradients, strict=True)}, names


def _combined(name: str, gradients: list[list[float]], **kwargs: object) -> torch.Tensor:
    theta, losses, names = _linear_problem(gradients)
    build_weighting(name, task_names=names, **kwargs).backward(losses, shared_params=[theta], all_params=[theta])
    return theta.grad


def test_pcgrad_removes_the_conflicting_component() -> None:
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # g1 . g2 = -1 < 0
    d = _combined("pcgrad", [g1.tolist(), g2.tolist()])
    # g1' = g1 - (g1.g2/|g2|^2) g2 = (0.5, 0.5); g2' = g2 - (g2.g1/|g1|^2) g1 = (0, 1) (Yu et al. 2020, Alg. 1)
    assert torch.allclose(d, torch.tensor([0.5, 1.5]))
    assert (d @ g1) > 0 and (d @ g2) > 0  # the plain sum (0, 1) would not improve g1 at all
    assert torch.allclose(_combined("pcgrad", [[1.0, 0.0], [1.0, 1.0]]), torch.tensor([2.0, 1.0]))  # no conflict


def test_pcgrad_logs_the_fraction_of_conflicting_pairs() -> None:
    theta, losses, names = _linear_problem([[1.0, 0.0], [-1.0, 0.1], [0.0, 1.0]])
    logs = build_weighting("pcgrad", task_names=names).backward(losses, shared_params=[theta], all_params=[theta])
    assert logs["pcgrad/conflict_fraction"] == pytest.approx(1 / 3)


def test_cagrad_improves_the_worst_task_over_the_mean_gradient() -> None:
    g1, g2 = torch.tensor([10.0, 0.0]), torch.tensor([-1.0, 1.0])
    mean = (g1 + g2) / 2  # mean . g2 < 0: plain averaging makes task 2 worse
    d = _combined("cagrad", [g1.tolist(), g2.tolist()], c=0.4)
    assert (mean @ g2) < 0 and (d @ g2) / d.norm() > (mean @ g2) / mean.norm()
    assert (d @ g1) > 0
    assert torch.allclose(_combined("cagrad", [g1.tolist(), g2.tolist()], c=0.0), g1 + g2)  # c = 0: the plain sum


def test_gradnorm_balances_weighted_gradient_norms() -> None:
    """Equal training rates: the task with the 10x smaller gradient ends up with ~10x the weight."""
    theta = nn.Parameter(torch.zeros(2))
    weighting = build_weighting("gradnorm", task_names=("big", "small"), alpha=1.5, lr=0.025)
    for _ in range(300):
        theta.grad = None
        losses = {"big": 100 + 10 * theta[0], "small": 100 + theta[1]}
        weighting.backward(losses, shared_params=[theta], all_params=[theta])
    w = weighting.current_weights()
    assert w["big"] + w["small"] == pytest.approx(2.0)
    assert 0.7 < (w["small"] * 1.0) / (w["big"] * 10.0) < 1.4


def test_gradnorm_favours_the_task_that_trains_slower() -> None:
    theta = nn.Parameter(torch.zeros(2))
    weighting = build_weighting("gradnorm", task_names=("fast", "slow"))
    for step in range(40):
        theta.grad = None
        fast = 1.0 if step == 0 else 0.5  # the "fast" loss halves after the first step, "slow" does not move
        weighting.backward({"fast": fast + theta[0], "slow": 1.0 + theta[1]}, shared_params=[theta], all_params=[theta])
    w = weighting.current_weights()
    assert w["slow"] > 1.2 > 0.8 > w["fast"]


def test_gradnorm_ignores_overflowed_amp_steps() -> None:
    theta = nn.Parameter(torch.zeros(2))
    weighting = build_weighting("gradnorm", task_names=("x", "y"))
    losses = {"x": 1 + 3 * theta[0], "y": 1 + theta[1]}
    weighting.backward(losses, shared_params=[theta], all_params=[theta], grad_scale=float("inf"))
    assert weighting.current_weights() == {"x": 1.0, "y": 1.0}


def test_uncertainty_weights_the_noisier_task_down() -> None:
    """Kendall et al. 2018: at the optimum exp(s_i) = L_i, so the noisy task's weight 0.5 exp(-s_i) is smaller."""
    torch.manual_seed(0)
    model = Toy(("clean", "noisy"))
    weighting = build_weighting("uncertainty", task_names=("clean", "noisy"))
    opt = torch.optim.Adam([*model.parameters(), *weighting.parameters()], lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(120):
        x = torch.randn(64, 4, generator=g)
        signal = x[:, 0] - 0.5 * x[:, 1]
        ys = {"clean": signal + 0.05 * torch.randn(64, generator=g), "noisy": signal + torch.randn(64, generator=g)}
        opt.zero_grad()
        losses = _losses(model(x), ys)
        weighting.backward(losses, shared_params=list(model.shared.parameters()), all_params=list(model.parameters()))
        opt.step()
    w = weighting.current_weights()
    assert w["clean"] > 5 * w["noisy"]
    # The learned variance tracks the noisy task's loss (noise variance 1).
    assert math.exp(weighting.log_vars[1].item()) == pytest.approx(losses["noisy"].item(), rel=0.5)


def test_dwa_gives_more_weight_to_the_task_whose_loss_falls_slower() -> None:
    weighting = build_weighting("dwa", task_names=("fast", "slow"), temperature=2.0)
    weighting.end_epoch(0, {"fast": 1.0, "slow": 1.0})
    assert weighting.current_weights() == {"fast": 1.0, "slow": 1.0}  # two epochs are needed for a ratio
    weighting.end_epoch(1, {"fast": 0.5, "slow": 1.0})
    w = weighting.current_weights()
    e_fast, e_slow = math.exp(0.5 / 2), math.exp(1.0 / 2)  # Liu et al. 2019, Eq. 2 with T = 2
    assert w["fast"] == pytest.approx(2 * e_fast / (e_fast + e_slow), rel=1e-6)
    assert w["slow"] > w["fast"] and w["slow"] + w["fast"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("magic", {}, "unknown method 'magic'"),
        ("dwa", {"temp": 2.0}, r"unknown option\(s\) \['temp'\]"),
        ("dwa", {"temperature": 0.0}, "temperature must be > 0"),
        ("static", {"weights": {}}, "give weights"),
        ("equal", {"weights": {"z": 1.0}}, "'z' is not a task"),
        ("equal", {"weights": {"a": -1.0}}, "weighting.weights.a"),
        ("gradnorm", {"lr": 0.0}, "need alpha >= 0 and lr > 0"),
        ("cagrad", {"c": -0.1}, "c must be >= 0"),
    ],
)
def test_bad_weighting_configs_raise_config_error(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_weighting(name, task_names=NAMES, **kwargs)


def test_missing_task_loss_and_duplicate_names_raise_config_error() -> None:
    model, (x, ys) = Toy(), _data()
    losses = _losses(model(x), ys)
    del losses["c"]
    with pytest.raises(ConfigError, match=r"missing tasks \['c'\]"):
        build_weighting("pcgrad", task_names=NAMES).backward(
            losses, shared_params=list(model.shared.parameters()), all_params=list(model.parameters())
        )
    with pytest.raises(ConfigError, match="unique"):
        build_weighting("equal", task_names=("a", "a"))
    with pytest.raises(ConfigError, match=r"no mean loss for tasks \['c'\]"):
        build_weighting("dwa", task_names=NAMES).end_epoch(0, {"a": 1.0, "b": 1.0})


def test_gradient_methods_apply_reduce_to_each_task_before_combining() -> None:
    """Deterministic check of the DDP contract: ``reduce`` sees every per-task shared gradient separately."""
    theta, losses, names = _linear_problem([[1.0, 0.0], [-1.0, 1.0]])
    seen: list[torch.Tensor] = []

    def reduce(t: torch.Tensor) -> torch.Tensor:
        seen.append(t.detach().clone())
        return t

    weighting = build_weighting("pcgrad", task_names=names)
    weighting.backward(losses, shared_params=[theta], all_params=[theta], reduce=reduce)
    assert [s.tolist() for s in seen] == [[1.0, 0.0], [-1.0, 1.0]]  # per task, before the projection


# ----------------------------------------------------------------------------------------------- DDP (gloo)

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_methods(rank: int, world: int, ddp: bool) -> dict[str, dict[str, torch.Tensor]]:
    """Two optimizer steps per method; rank r takes its half of the batch. Returns grads and weighting states."""
    x, ys = _data(8)
    part = slice(rank * 8 // world, (rank + 1) * 8 // world)
    results = {}
    for name in sorted(WEIGHTINGS):
        torch.manual_seed(0)
        model = Toy()
        weighting = build_weighting(name, task_names=NAMES, **_kwargs(name))
        opt = torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=0.1)
        net = nn.parallel.DistributedDataParallel(model) if ddp else model
        reduce = None
        if ddp:

            def reduce(t: torch.Tensor) -> torch.Tensor:
                t = t.clone()
                dist.all_reduce(t)
                return t / world

        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            no_sync = net.no_sync() if ddp and weighting.needs_per_task_grads else contextlib.nullcontext()
            with no_sync:
                losses = _losses(net(x[part]), {k: v[part] for k, v in ys.items()})
                weighting.backward(
                    losses,
                    shared_params=list(model.shared.parameters()),
                    all_params=list(model.parameters()),
                    reduce=reduce,
                    with_grad_norms=True,
                )
            grads = torch.cat([p.grad.reshape(-1) for p in [*model.parameters(), *weighting.parameters()]])
            opt.step()
        results[name] = {"grads": grads, "params": torch.cat([p.detach().reshape(-1) for p in model.parameters()])}
        results[name].update({f"state/{k}": v.clone() for k, v in weighting.state_dict().items()})
    return results


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(_run_methods(rank, world, ddp=True), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_single_process(tmp_path: Path) -> None:
    """Every method: 2 ranks x 4 samples under real DDP give the gradients and weights of 1 process x 8 samples."""
    mp.spawn(_ddp_worker, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    single = _run_methods(0, 1, ddp=False)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name, expected in single.items():
        for key, value in expected.items():
            for r, result in enumerate(ranks):
                got = result[name][key]
                close = torch.allclose(got.double(), value.double(), rtol=1e-5, atol=1e-6, equal_nan=True)
                assert close, (name, key, r, got, value)


@pytest.mark.slow
def test_gradient_methods_work_through_torch_compile() -> None:
    """The per-task backward passes (retain_graph) run through a compiled graph (AOTAutograd) unchanged."""
    torch.manual_seed(0)
    model, (x, ys) = Toy(), _data()
    compiled = torch.compile(model, backend="aot_eager")  # the autograd path of inductor without a C compiler
    grads = {}
    for tag, net in (("eager", model), ("compiled", compiled)):
        model.zero_grad(set_to_none=True)
        weighting = build_weighting("pcgrad", task_names=NAMES)
        weighting.backward(
            _losses(net(x), ys), shared_params=list(model.shared.parameters()), all_params=list(model.parameters())
        )
        grads[tag] = _grads(model)
    assert torch.allclose(grads["eager"], grads["compiled"], atol=1e-6)
