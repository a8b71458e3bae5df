"""Task weighting: how the per-task losses of one step become the gradients of the shared network.

Two families share one interface (``Weighting.backward``):

* loss weighting (``equal``/``static``, ``uncertainty``, ``dwa``) backpropagates one weighted sum of the losses;
  under DDP the usual gradient hooks average it across ranks.
* gradient methods (``gradnorm``, ``pcgrad``, ``cagrad``) need each task's gradient on the shared backbone
  separately (``needs_per_task_grads``); the loop then runs the backward under DDP's ``no_sync()`` and passes
  ``reduce`` (average across ranks), which is applied to every per-task gradient *before* they are combined, so the
  combination sees the same global gradients on every rank and DDP equals single-process training.

``grad_scale`` is the AMP loss scale (``GradScaler.get_scale()``, 1.0 without a scaler): gradients are written
scaled, as ``scaler.scale(loss).backward()`` would, and logged norms are unscaled. See docs/weighting.md.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from cxrmtl.errors import ConfigError

Reduce = Callable[[Tensor], Tensor]
WEIGHTINGS: dict[str, type[Weighting]] = {}


def register_weighting(name: str) -> Callable[[type[Weighting]], type[Weighting]]:
    """Class decorator adding a weighting to ``WEIGHTINGS`` under ``name``."""

    def wrap(cls: type[Weighting]) -> type[Weighting]:
        WEIGHTINGS[name] = cls
        return cls

    return wrap


def build_weighting(name: str, *, task_names: Sequence[str], **kwargs: Any) -> Weighting:
    """Create weighting ``name`` for ``task_names``; unknown names or options raise ConfigError naming them."""
    import inspect

    if name not in WEIGHTINGS:
        raise ConfigError(f"weighting: unknown method {name!r}; choose one of {sorted(WEIGHTINGS)}")
    cls = WEIGHTINGS[name]
    accepted = {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "task_names")}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"weighting {name!r}: unknown option(s) {unknown}; accepted: {sorted(accepted)}")
    return cls(task_names=task_names, **kwargs)


# ----------------------------------------------------------------------------------------------- gradient helpers


def flat_grad(loss: Tensor, params: Sequence[nn.Parameter], *, retain_graph: bool) -> Tensor:
    """Gradient of ``loss`` w.r.t. ``params`` as one flat tensor (zeros for unused parameters)."""
    if not loss.requires_grad:
        return torch.cat([torch.zeros_like(p).reshape(-1) for p in params])
    grads = torch.autograd.grad(loss, list(params), retain_graph=retain_graph, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)]
    )


def accumulate_flat(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    """Add a flat gradient to ``p.grad`` of every parameter (so micro-batch accumulation keeps working)."""
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.add_(g)


def task_gradient_norms(
    losses: Mapping[str, Tensor],
    shared_params: Sequence[nn.Parameter],
    *,
    reduce: Reduce | None = None,
) -> dict[str, float]:
    """``{"gradnorm/<task>": ||d loss_task / d shared||}`` without touching ``.grad`` (graph is retained).

    Costs one backward per task; the loop calls it (through ``with_grad_norms``) once per logging interval.
    Under DDP the per-rank norms are averaged (a logging figure, not used for training).
    """
    norms = torch.stack([flat_grad(loss, shared_params, retain_graph=True).norm() for loss in losses.values()])
    if reduce is not None:
        norms = reduce(norms)
    return {f"gradnorm/{name}": float(v) for name, v in zip(losses, norms.tolist(), strict=True)}


# ----------------------------------------------------------------------------------------------- base classes


class Weighting(nn.Module, abc.ABC):
    """Base class. Subclasses keep their state in parameters/buffers so ``state_dict()`` checkpoints it."""

    needs_per_task_grads: ClassVar[bool] = False

    def __init__(self, *, task_names: Sequence[str]) -> None:
        super().__init__()
        names = tuple(task_names)
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"weighting: task names must be non-empty and unique, got {list(names)}")
        self.task_names: tuple[str, ...] = names

    def _ordered(self, losses: Mapping[str, Tensor]) -> list[Tensor]:
        missing = [n for n in self.task_names if n not in losses]
        extra = [n for n in losses if n not in self.task_names]
        if missing or extra:
            raise ConfigError(f"weighting: losses missing tasks {missing} / unknown tasks {extra}")
        return [losses[n] for n in self.task_names]

    @abc.abstractmethod
    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        shared_params: Sequence[nn.Parameter],
        all_params: Sequence[nn.Parameter],
        grad_scale: float = 1.0,
        reduce: Reduce | None = None,
        with_grad_norms: bool = False,
    ) -> dict[str, float]:
        """Fill ``.grad`` of ``all_params`` (and of this module's parameters) from the task losses; return logs."""

    def end_epoch(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        """Called by the loop after every epoch with the (globally averaged) mean training loss of each task."""

    @abc.abstractmethod
    def current_weights(self) -> dict[str, float]:
        """The weight each task's loss has now (for logging)."""


class LossWeighting(Weighting):
    """Backpropagate ``sum_i w_i * L_i + regulariser`` in one pass; subclasses define ``loss_weights``."""

    @abc.abstractmethod
    def loss_weights(self) -> Tensor:
        """Weights (T,) in ``task_names`` order; may carry a graph to this module's parameters."""

    def regulariser(self) -> Tensor | None:
        """Extra term added to the total loss (the uncertainty method's log-variance penalty)."""
        return None

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        shared_params: Sequence[nn.Parameter],
        all_params: Sequence[nn.Parameter],
        grad_scale: float = 1.0,
        reduce: Reduce | None = None,
        with_grad_norms: bool = False,
    ) -> dict[str, float]:
        ordered = self._ordered(losses)
        logs = task_gradient_norms(losses, shared_params, reduce=reduce) if with_grad_norms else {}
        weights = self.loss_weights()
        total = sum(w * loss for w, loss in zip(weights.to(ordered[0].device), ordered, strict=True))
        reg = self.regulariser()
        if reg is not None:
            total = total + reg.to(total.device)
        (total * grad_scale).backward()
        self._reduce_own_grads(reduce)
        logs.update({f"weight/{k}": v for k, v in self.current_weights().items()})
        return logs

    def _reduce_own_grads(self, reduce: Reduce | None) -> None:
        """This module is not inside the DDP wrapper, so its parameters' gradients are averaged here."""
        own = [p for p in self.parameters() if p.grad is not None]
        if reduce is None or not own:
            return
        flat = reduce(torch.cat([p.grad.reshape(-1) for p in own]))
        offset = 0
        for p in own:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.loss_weights().detach().cpu().tolist(), strict=True))


class GradientWeighting(Weighting):
    """Per-task gradients on the shared parameters, reduced across ranks, then combined by ``combine``."""

    needs_per_task_grads: ClassVar[bool] = True

    @abc.abstractmethod
    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
        """(T, P) per-task shared gradients and (T,) global losses -> (combined (P,), head weights (T,), logs)."""

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        shared_params: Sequence[nn.Parameter],
        all_params: Sequence[nn.Parameter],
        grad_scale: float = 1.0,
        reduce: Reduce | None = None,
        with_grad_norms: bool = False,
    ) -> dict[str, float]:
        ordered = self._ordered(losses)
        shared = list(shared_params)
        shared_ids = {id(p) for p in shared}
        heads = [p for p in all_params if id(p) not in shared_ids and p.requires_grad]
        n_shared = sum(p.numel() for p in shared)
        shared_grads, head_grads = [], []
        for i, loss in enumerate(ordered):
            flat = flat_grad(loss * grad_scale, shared + heads, retain_graph=i < len(ordered) - 1)
            g = flat[:n_shared]
            shared_grads.append(reduce(g) if reduce is not None else g)
            head_grads.append(flat[n_shared:])
        grads = torch.stack(shared_grads)
        loss_values = torch.stack([loss.detach().float() for loss in ordered])
        if reduce is not None:
            loss_values = reduce(loss_values)
        used = self.current_weights()  # log the weights of this step, before a method updates them
        combined, head_weights, logs = self.combine(grads, loss_values)
        accumulate_flat(shared, combined)
        if heads:
            head_flat = sum(w * g for w, g in zip(head_weights.to(grads.device, grads.dtype), head_grads, strict=True))
            accumulate_flat(heads, reduce(head_flat) if reduce is not None else head_flat)
        norms = (grads.norm(dim=1) / grad_scale).tolist()
        logs.update({f"gradnorm/{name}": float(v) for name, v in zip(self.task_names, norms, strict=True)})
        logs.update({f"weight/{k}": v for k, v in used.items()})
        return logs

    def current_weights(self) -> dict[str, float]:
        return dict.fromkeys(self.task_names, 1.0)


# ----------------------------------------------------------------------------------------------- loss weighting


@register_weighting("equal")
class EqualWeighting(LossWeighting):
    """Fixed weights: all 1 (plain sum of losses) unless ``weights`` gives some tasks another value."""

    def __init__(self, *, task_names: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names=task_names)
        values = dict.fromkeys(self.task_names, 1.0)
        for name, value in (weights or {}).items():
            if name not in values:
                raise ConfigError(f"weighting.weights: {name!r} is not a task; tasks are {list(self.task_names)}")
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"weighting.weights.{name}: must be a finite number >= 0, got {value!r}")
            values[name] = float(value)
        self.register_buffer("weights", torch.tensor([values[n] for n in self.task_names], dtype=torch.float32))

    def loss_weights(self) -> Tensor:
        return self.weights


@register_weighting("static")
class StaticWeighting(EqualWeighting):
    """Fixed, user-chosen weights (``weights`` required; tasks not listed keep 1)."""

    def __init__(self, *, task_names: Sequence[str], weights: Mapping[str, float]) -> None:
        if not weights:
            raise ConfigError("weighting 'static': give weights, e.g. weights: {findings: 1.0, age: 0.2}")
        super().__init__(task_names=task_names, weights=weights)


@register_weighting("uncertainty")
class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty (Kendall, Gal & Cipolla, CVPR 2018), Eq. 7 form for every task.

    total = sum_i 0.5 * exp(-s_i) * L_i + 0.5 * s_i with learnable s_i = log sigma_i^2. At the optimum
    exp(s_i) = L_i, so a task whose loss stays high (noisy labels) gets a small weight 0.5 / L_i. The s_i are
    ordinary parameters: the loop adds them to the optimizer (no weight decay).
    """

    def __init__(self, *, task_names: Sequence[str], init_log_var: float = 0.0) -> None:
        super().__init__(task_names=task_names)
        self.log_vars = nn.Parameter(torch.full((len(self.task_names),), float(init_log_var)))

    def loss_weights(self) -> Tensor:
        return 0.5 * torch.exp(-self.log_vars)

    def regulariser(self) -> Tensor:
        return 0.5 * self.log_vars.sum()


@register_weighting("dwa")
class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison, MTAN, CVPR 2019).

    w_i(t) = T * softmax_i(r_i / temperature), r_i = L_i(t-1) / L_i(t-2) from epoch-mean losses: a task whose loss
    falls slowly gets more weight. Weights are 1 for the first two epochs; temperature 2 is the paper's value.
    """

    def __init__(self, *, task_names: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(task_names=task_names)
        if not temperature > 0:
            raise ConfigError(f"weighting dwa: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        n = len(self.task_names)
        self.register_buffer("history", torch.full((2, n), float("nan"), dtype=torch.float64))
        self.register_buffer("weights", torch.ones(n, dtype=torch.float32))

    def loss_weights(self) -> Tensor:
        return self.weights

    def end_epoch(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        values = torch.tensor([float(mean_losses[n]) for n in self._checked(mean_losses)], dtype=torch.float64)
        self.history[0] = self.history[1].clone()
        self.history[1] = values
        prev, last = self.history[0], self.history[1]
        if torch.isfinite(prev).all() and torch.isfinite(last).all() and (prev > 0).all():
            ratio = last / prev
            self.weights.copy_((len(self.task_names) * torch.softmax(ratio / self.temperature, 0)).float())

    def _checked(self, mean_losses: Mapping[str, float]) -> tuple[str, ...]:
        missing = [n for n in self.task_names if n not in mean_losses]
        if missing:
            raise ConfigError(f"weighting dwa: end_epoch got no mean loss for tasks {missing}")
        return self.task_names


# ----------------------------------------------------------------------------------------------- gradient methods


@register_weighting("gradnorm")
class GradNorm(GradientWeighting):
    """GradNorm (Chen et al., ICML 2018): learn weights so that each task's weighted gradient norm tracks
    ``mean norm * r_i ** alpha``, r_i = relative inverse training rate (L_i(t)/L_i(0) over its mean).

    The paper measures norms on the last shared layer; here on all shared parameters (already computed for the
    combination). The weights follow the gradient of the paper's L_grad, normalised by the mean norm so the step
    is scale-free (the paper uses the network's own optimizer), then are renormalised to sum to T.
    alpha = 1.5 is the paper's NYUv2 setting; lr 0.025 matches its weight learning rate order.
    """

    def __init__(self, *, task_names: Sequence[str], alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(task_names=task_names)
        if alpha < 0 or not lr > 0:
            raise ConfigError(f"weighting gradnorm: need alpha >= 0 and lr > 0, got alpha={alpha}, lr={lr}")
        self.alpha, self.lr = float(alpha), float(lr)
        n = len(self.task_names)
        self.register_buffer("weights", torch.ones(n, dtype=torch.float32))
        self.register_buffer("initial_losses", torch.full((n,), float("nan"), dtype=torch.float32))

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
        w = self.weights.to(grads.device, grads.dtype)
        combined = (w[:, None] * grads).sum(0)
        device = self.weights.device
        self._update(grads.norm(dim=1).float().to(device), losses.float().to(device))
        return combined, w, {}

    def _update(self, norms: Tensor, losses: Tensor) -> None:
        if not (torch.isfinite(norms).all() and torch.isfinite(losses).all()):
            return  # an AMP overflow step: the scaler skips it, the weights must not learn from it either
        init = self.initial_losses
        fresh = ~torch.isfinite(init) & (losses > 0)
        init[fresh] = losses[fresh]
        if not (torch.isfinite(init).all() and (init > 0).all() and norms.mean() > 0):
            return
        ratio = losses / init
        rate = ratio / ratio.mean()
        weighted = self.weights * norms
        target = weighted.mean() * rate.pow(self.alpha)
        step = torch.sign(weighted - target) * norms / norms.mean()
        new = (self.weights - self.lr * step).clamp_min(1e-3)
        self.weights.copy_(new * len(new) / new.sum())

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.weights.tolist(), strict=True))


@register_weighting("pcgrad")
class PCGrad(GradientWeighting):
    """PCGrad (Yu et al., NeurIPS 2020): project each task gradient off the normal plane of every other task's
    gradient it conflicts with (negative dot product), in a random order, then sum.

    The order comes from a generator seeded by (seed, step), identical on every rank and after a resume.
    """

    def __init__(self, *, task_names: Sequence[str], seed: int = 0) -> None:
        super().__init__(task_names=task_names)
        self.seed = int(seed)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.step))
        self.step += 1
        n = grads.shape[0]
        dots = grads @ grads.T
        sq = dots.diagonal().clamp_min(1e-20)
        projected = grads.clone()
        for i in range(n):
            for j in torch.randperm(n, generator=gen).tolist():
                if j == i:
                    continue
                dot = projected[i] @ grads[j]
                if dot < 0:
                    projected[i] -= (dot / sq[j]) * grads[j]
        conflicts = (dots.triu(1) < 0).sum().item()
        pairs = n * (n - 1) / 2
        return projected.sum(0), torch.ones(n), {"pcgrad/conflict_fraction": conflicts / pairs if pairs else 0.0}


@register_weighting("cagrad")
class CAGrad(GradientWeighting):
    """Conflict-averse gradient descent (Liu et al., NeurIPS 2021).

    d = g0 + (c ||g0|| / ||g_w||) g_w, where g0 is the mean task gradient and g_w = sum_i w_i g_i with w on the
    simplex minimising g_w . g0 + c ||g0|| ||g_w|| (solved on the T x T Gram matrix with SLSQP, as in the authors'
    code), then divided by 1 + c^2 (their ``rescale=1``). c = 0.4 is the paper's NYUv2/Cityscapes setting.
    We multiply by T so that without conflicts (c = 0) the step equals the sum of the task gradients, i.e. the
    same scale as ``equal`` and ``pcgrad``.
    """

    def __init__(self, *, task_names: Sequence[str], c: float = 0.4) -> None:
        super().__init__(task_names=task_names)
        if c < 0:
            raise ConfigError(f"weighting cagrad: c must be >= 0, got {c}")
        self.c = float(c)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
        n = grads.shape[0]
        gram = (grads.double() @ grads.double().T).cpu().numpy()
        g0 = grads.mean(0)
        if self.c == 0 or not np.isfinite(gram).all():
            return g0 * n, torch.ones(n), {}
        w = self._solve(gram)
        gw = (torch.from_numpy(w).to(grads.device, grads.dtype)[:, None] * grads).sum(0)
        g0_norm = math.sqrt(max(gram.mean(), 0.0))
        lam = self.c * g0_norm / (float(gw.norm()) + 1e-12)
        d = (g0 + lam * gw) / (1 + self.c**2)
        return d * n, torch.ones(n), {}

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        from scipy.optimize import minimize

        n = gram.shape[0]
        scale = max(float(np.abs(gram).max()), 1e-30)  # conditioning only: the argmin is scale invariant
        a = gram / scale
        b = np.full(n, 1.0 / n)
        c2 = self.c**2 * float(a.mean())

        def objective(x: np.ndarray) -> float:
            return float(x @ a @ b + math.sqrt(c2) * math.sqrt(max(float(x @ a @ x), 0.0) + 1e-12))

        res = minimize(
            objective,
            b.copy(),
            bounds=[(0.0, 1.0)] * n,
            constraints=({"type": "eq", "fun": lambda x: 1.0 - x.sum()},),
            method="SLSQP",
        )
        w = np.clip(res.x if np.all(np.isfinite(res.x)) else b, 0.0, None)
        return w / w.sum() if w.sum() > 0 else b
