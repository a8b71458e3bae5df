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
from cxrmtl.distributed import DistContext, mean_reducer
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


# ----------------------------------------------------------------------------------------------- fixes of issue 11


def test_uncertainty_learns_known_noise_variances_at_the_default_weighting_lr() -> None:
    """Three regressions with noise variances 0.1 / 0.5 / 1.8: at the optimum exp(s_i) = L_i = sigma_i^2.

    The network trains at 3e-3; the log-variances get ``optim.weighting_lr`` from the default OptimConfig. At the
    network's own rate they moved too little (after 1,500 steps: 0.2 instead of 0.1 for the cleanest task).
    """
    variances = (0.1, 0.5, 1.8)
    torch.manual_seed(0)
    model = Toy(NAMES)
    model.shared = nn.Linear(4, 6)  # linear targets: a linear shared layer fits them exactly
    model.forward = lambda x: {n: h(model.shared(x)).squeeze(1) for n, h in model.heads.items()}  # type: ignore
    weighting = build_weighting("uncertainty", task_names=NAMES)
    opt = build_optimizer(model, OptimConfig(lr=3e-3, weight_decay=0.0), extra=list(weighting.parameters()))
    g = torch.Generator().manual_seed(1)
    coef = torch.randn(3, 4, generator=g)
    for _ in range(800):
        x = torch.randn(128, 4, generator=g)
        ys = {n: x @ coef[i] + math.sqrt(variances[i]) * torch.randn(128, generator=g) for i, n in enumerate(NAMES)}
        opt.zero_grad()
        weighting.backward(_losses(model(x), ys), shared_params=list(model.shared.parameters()),
                           all_params=list(model.parameters()))
        opt.step()
    learned = weighting.log_vars.detach().exp()
    assert torch.allclose(learned, torch.tensor(variances), rtol=0.2), learned


def test_gradnorm_weights_converge_smoothly_to_the_balancing_weights() -> None:
    """Norms 1 / 1 / 10 (with 10 % noise per step) and equal training rates: the ideal weights are proportional
    to 1 / norm (1.43, 1.43, 0.143). A fixed-size step on the weights made the small one swing 0.07-0.25."""
    scales = torch.tensor([1.0, 1.0, 10.0])
    ideal = 3 / (1 / scales).sum() / scales
    g = torch.Generator().manual_seed(0)
    weighting = build_weighting("gradnorm", task_names=NAMES)
    z = torch.zeros(16, 32, requires_grad=True)  # the shared representation
    history = []
    for _ in range(400):
        scale = scales * torch.exp(0.1 * torch.randn(3, generator=g))
        u = torch.randn(3, 16, 32, generator=g) / math.sqrt(16 * 32)
        losses = {n: 1 + scale[i] * (z * u[i]).sum() for i, n in enumerate(NAMES)}
        weighting.backward(losses, shared_params=[z], all_params=[z], features=z)
        history.append(list(weighting.current_weights().values()))
    tail = torch.tensor(history[-100:])
    assert torch.allclose(tail.mean(0), ideal, rtol=0.1), tail.mean(0)
    assert (tail.std(0) / tail.mean(0)).max() < 0.1, tail.std(0) / tail.mean(0)
    assert tail.sum(1).sub(3).abs().max() < 1e-5


def test_gradnorm_leaves_a_task_without_gradient_out_of_the_balance() -> None:
    """A task with no labelled sample in the batch (loss 0, gradient 0) keeps its weight; the others keep their
    total and are balanced among themselves. (Its zero norm used to pull its weight up every such step.)"""
    z = torch.zeros(4, 3, requires_grad=True)
    weighting = build_weighting("gradnorm", task_names=("big", "small", "empty"))
    for _ in range(60):
        losses = {"big": 1 + 10 * z[:, 0].sum(), "small": 1 + z[:, 1].sum(), "empty": 0 * z.sum()}
        logs = weighting.backward(losses, shared_params=[z], all_params=[z], features=z)
    w = weighting.current_weights()
    assert w["empty"] == pytest.approx(1.0, abs=1e-9) and logs["weight/empty"] == pytest.approx(1.0, abs=1e-6)
    assert w["big"] + w["small"] == pytest.approx(2.0, abs=1e-9)
    assert w["small"] > 5 * w["big"]


def test_gradnorm_needs_one_backward_through_the_backbone() -> None:
    """With ``features`` the per-task norms stop at the representation: no per-task gradient reaches the shared
    layer (counted by a hook on its weight), only the one backward of the weighted sum does."""
    torch.manual_seed(0)
    model, (x, ys) = Toy(), _data()
    calls = []
    model.shared.weight.register_hook(lambda grad: calls.append(1))
    _step(model, build_weighting("gradnorm", task_names=NAMES), x, ys)
    assert len(calls) == 1
    _step(model, build_weighting("gradnorm", task_names=NAMES), x, ys, features=None)  # fallback: per task
    assert len(calls) == 1 + len(NAMES) + 1


def _pcgrad_reference(grads: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Yu et al. 2020, Algorithm 1 as written: sequential projections of full gradient vectors."""
    n = grads.shape[0]
    projected = grads.clone()
    for i in range(n):
        for j in torch.randperm(n, generator=gen).tolist():
            if j == i:
                continue
            dot = projected[i] @ grads[j]
            if dot < 0:
                projected[i] -= dot / (grads[j] @ grads[j]) * grads[j]
    return projected.sum(0)


@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_on_the_gram_matrix_equals_the_sequential_algorithm(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    gradients = torch.randn(5, 40, generator=g, dtype=torch.float64)
    gradients[1] = -0.8 * gradients[0] + 0.3 * gradients[1]  # make sure some pairs conflict
    weighting = build_weighting("pcgrad", task_names=[f"t{i}" for i in range(5)], seed=seed)
    for step in range(3):  # the order generator is seeded by (seed, step)
        theta = nn.Parameter(torch.zeros(40, dtype=torch.float64))
        losses = {f"t{i}": theta @ gradients[i] for i in range(5)}
        weighting.backward(losses, shared_params=[theta], all_params=[theta])
        want = _pcgrad_reference(gradients, torch.Generator().manual_seed(seed * 1_000_003 + step))
        assert torch.allclose(theta.grad, want, rtol=1e-6, atol=1e-6)


def _cagrad_reference(grads: torch.Tensor, w: torch.Tensor, c: float) -> torch.Tensor:
    """Liu et al. 2021 with the authors' rescale: (g0 + c |g0| / |g_w| g_w) / (1 + c^2), times T (see the class)."""
    g0 = grads.mean(0)
    gw = w @ grads
    return (g0 + c * g0.norm() / gw.norm() * gw) / (1 + c**2) * grads.shape[0]


def test_cagrad_from_coefficients_equals_the_vector_formula() -> None:
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(4, 30, generator=g, dtype=torch.float64)
    grads[2] = -grads[0] + 0.2 * grads[2]
    weighting = build_weighting("cagrad", task_names=[f"t{i}" for i in range(4)], c=0.4)
    theta = nn.Parameter(torch.zeros(30, dtype=torch.float64))
    weighting.backward({f"t{i}": theta @ grads[i] for i in range(4)}, shared_params=[theta], all_params=[theta])
    w = torch.from_numpy(weighting._solve((grads @ grads.T).numpy()))
    assert torch.allclose(theta.grad, _cagrad_reference(grads, w, 0.4), rtol=1e-6, atol=1e-9)


def test_cagrad_leaves_tasks_without_gradient_out_of_the_solve() -> None:
    """A task with no labelled sample in the batch has a zero gradient. In the solve it took all the weight (g_w = 0
    zeroes the objective) and the update became the plain mean, shrunk. Left out, the update is that of the others."""
    gradients = torch.tensor([[1.0, 0.0], [-0.5, 1.0]])
    with_empty = _combined("cagrad", [*gradients.tolist(), [0.0, 0.0]])
    assert torch.allclose(with_empty, _combined("cagrad", gradients.tolist()), atol=1e-6)
    mean = gradients.mean(0)
    # Conflict-averse: the worst task's rate of improvement beats that of the mean gradient.
    assert (gradients @ with_empty).min() / with_empty.norm() > (gradients @ mean).min() / mean.norm() + 0.05


def test_surgery_logs_effective_weights_that_reproduce_the_update() -> None:
    """PCGrad and CAGrad log the coefficient of each task gradient in the update: not all 1 on conflicting tasks,
    and sum_i weight_i g_i is the update itself."""
    gradients = [[1.0, 0.0], [-1.0, 1.0], [0.2, 0.5]]
    for name in ("pcgrad", "cagrad"):
        theta, losses, names = _linear_problem(gradients)
        logs = build_weighting(name, task_names=names).backward(losses, shared_params=[theta], all_params=[theta])
        weights = torch.tensor([logs[f"weight/{n}"] for n in names])
        assert not torch.allclose(weights, torch.ones(3)), name
        assert torch.allclose(weights @ torch.tensor(gradients), theta.grad, atol=1e-6), name
    # PCGrad on (1, 0), (-1, 1): g1' = g1 + 0.5 g2, g2' = g2 + g1, so the update is 2 g1 + 1.5 g2.
    theta, losses, names = _linear_problem(gradients[:2])
    logs = build_weighting("pcgrad", task_names=names).backward(losses, shared_params=[theta], all_params=[theta])
    assert (logs["weight/t0"], logs["weight/t1"]) == pytest.approx((2.0, 1.5))


def test_per_task_reductions_start_right_after_each_backward() -> None:
    """With an asynchronous reducer (``reduce.start``) task i's all-reduce is launched before task i+1's backward
    runs, and all of them are waited for before the gradients are combined."""
    events: list[str] = []
    theta = nn.Parameter(torch.zeros(2))
    names = ("t0", "t1", "t2")
    losses = {}
    for i, n in enumerate(names):
        x = theta * 1.0
        x.register_hook(lambda grad, i=i: events.append(f"backward {i}"))
        losses[n] = x @ torch.tensor([1.0, float(i) - 1])

    def reduce(t: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the synchronous form must not be used when start exists")

    def start(t: torch.Tensor) -> object:
        events.append("start")
        return lambda: events.append("wait") or t

    reduce.start = start  # type: ignore[attr-defined]
    build_weighting("pcgrad", task_names=names).backward(losses, shared_params=[theta], all_params=[theta],
                                                         reduce=reduce)
    assert events == ["backward 0", "start", "backward 1", "start", "backward 2", "start", "wait", "wait", "wait"]


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
        # The loop's reducer, with its asynchronous ``start`` (per-task all-reduces overlap the next backward).
        reduce = mean_reducer(DistContext(rank=rank, world_size=world)) if ddp else None
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
                    features=model.features,
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
