"""Task weighting: how the per-task losses of one step become the gradients of the shared network.

Two families share one interface (``Weighting.backward``):

* loss weighting (``equal``/``static``, ``uncertainty``, ``dwa``, ``gradnorm``) backpropagates one weighted sum of
  the losses; under DDP the usual gradient hooks average it across ranks. GradNorm learns its weights from
  per-task gradient norms on the shared representation (``features``), which costs one small backward per task
  through the heads only, not through the backbone.
* gradient surgery (``pcgrad``, ``cagrad``) needs each task's gradient on the shared backbone separately
  (``needs_per_task_grads``); the loop then runs the backward under DDP's ``no_sync()`` and passes ``reduce``
  (average across ranks), which is applied to every per-task gradient *before* they are combined, so the
  combination sees the same global gradients on every rank and DDP equals single-process training. Each task's
  reduction starts right after its backward (``reduce.start``, an asynchronous all-reduce, when the reducer has
  one) so the communication overlaps the next task's backward. Both methods are computed on the T x T Gram matrix
  of the task gradients: the update is ``sum_i a_i g_i``, and the coefficients ``a_i`` are the logged weights.

``grad_scale`` is the AMP loss scale (the value ``GradScaler.scale`` multiplies by, 1.0 without a scaler): gradients
are written scaled, as ``scaler.scale(loss).backward()`` would, and logged norms are unscaled. See docs/weighting.md.
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


def accumulate_flat(params: Sequence[nn.Parameter], flat: Tensor, *, owned: bool = False) -> None:
    """Add a flat gradient to ``p.grad`` of every parameter (so micro-batch accumulation keeps working).

    ``owned``: ``flat`` is a fresh tensor nobody else holds, so empty ``.grad`` slots take views of it (no copy).
    """
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
        if p.grad is None:
            p.grad = g if owned and g.dtype == flat.dtype else g.clone()
        else:
            p.grad.add_(g)


def gram_matrix(rows: Tensor, *, block: int = 1 << 20) -> Tensor:
    """``rows @ rows.T`` as float64 on the CPU, summed over column blocks of ``block``.

    Blocks: float64 accumulation across blocks (P is ~10^7), and on the CPU a 10^7-long reduction in one GEMM was
    ~2x slower than blocks of 2^20 columns here (cache-sized panels).
    """
    gram = torch.zeros(rows.shape[0], rows.shape[0], dtype=torch.float64, device=rows.device)
    for start in range(0, rows.shape[1], block):
        part = rows[:, start : start + block]
        gram += (part @ part.T).double()
    return gram.cpu()


def start_reduce(reduce: Reduce | None, tensor: Tensor) -> Callable[[], Tensor]:
    """Begin averaging ``tensor`` over ranks (in place); the returned callable waits for it and returns it.

    A reducer with a ``start`` attribute (``cxrmtl.distributed.mean_reducer``) launches an asynchronous all-reduce,
    so work done between this call and the wait (the next task's backward) overlaps the communication; any other
    reducer runs at once.
    """
    if reduce is None:
        return lambda: tensor
    start = getattr(reduce, "start", None)
    if start is not None:
        return start(tensor)
    reduced = reduce(tensor)
    return lambda: reduced


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
    needs_features: ClassVar[bool] = False  # wants the shared representation (backbone output) as ``features``

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
        features: Tensor | None = None,
    ) -> dict[str, float]:
        """Fill ``.grad`` of ``all_params`` (and of this module's parameters) from the task losses; return logs.

        ``features`` is the shared representation the heads read (with its graph); only methods with
        ``needs_features`` use it, and they fall back to the shared parameters without it.
        """

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
        features: Tensor | None = None,
    ) -> dict[str, float]:
        ordered = self._ordered(losses)
        logs = task_gradient_norms(losses, shared_params, reduce=reduce) if with_grad_norms else {}
        self.before_backward(ordered, features=features, shared_params=shared_params, grad_scale=grad_scale,
                             reduce=reduce)
        weights = self.loss_weights()
        logs.update({f"weight/{k}": v for k, v in self.current_weights().items()})  # the weights of this step
        total = sum(w * loss for w, loss in zip(weights.to(ordered[0].device), ordered, strict=True))
        reg = self.regulariser()
        if reg is not None:
            total = total + reg.to(total.device)
        (total * grad_scale).backward()
        self._reduce_own_grads(reduce)
        self.after_backward()
        return logs

    def before_backward(
        self,
        ordered: Sequence[Tensor],
        *,
        features: Tensor | None,
        shared_params: Sequence[nn.Parameter],
        grad_scale: float,
        reduce: Reduce | None,
    ) -> None:
        """Hook for methods that measure something on the graph before it is freed (GradNorm's norms)."""

    def after_backward(self) -> None:
        """Hook for methods that update their state after the step's weights were used (GradNorm)."""

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
    """Per-task gradients on the shared parameters, reduced across ranks, then combined as ``sum_i a_i g_i``.

    Subclasses only see the T x T Gram matrix ``G_ij = g_i . g_j`` (float64) and return the coefficients ``a``:
    both methods here are linear in the task gradients, so one pass over the (T, P) gradients builds the update.
    Each head gets its own task's gradient (weight 1).
    """

    needs_per_task_grads: ClassVar[bool] = True

    def __init__(self, *, task_names: Sequence[str]) -> None:
        super().__init__(task_names=task_names)
        # The coefficients of the last step (the effective task weights); not checkpointed: a per-step quantity.
        self.register_buffer("last_weights", torch.ones(len(self.task_names), dtype=torch.float64), persistent=False)
        self._grad_rows: Tensor | None = None

    @abc.abstractmethod
    def combine(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        """(T, T) float64 Gram matrix of the global task gradients -> (coefficients (T,) float64, logs)."""

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        shared_params: Sequence[nn.Parameter],
        all_params: Sequence[nn.Parameter],
        grad_scale: float = 1.0,
        reduce: Reduce | None = None,
        with_grad_norms: bool = False,
        features: Tensor | None = None,
    ) -> dict[str, float]:
        ordered = self._ordered(losses)
        shared = list(shared_params)
        shared_ids = {id(p) for p in shared}
        heads = [p for p in all_params if id(p) not in shared_ids and p.requires_grad]
        grads = self._gradient_buffer(len(ordered), shared)
        head_sum = [torch.zeros_like(p) for p in heads]
        pending = []
        for i, loss in enumerate(ordered):
            _task_gradient(loss * grad_scale, shared, heads, out=grads[i], head_sum=head_sum,
                           retain_graph=i < len(ordered) - 1)
            pending.append(start_reduce(reduce, grads[i]))  # overlaps the next task's backward
        head_flat = torch.cat([g.reshape(-1) for g in head_sum]) if heads else None
        head_done = start_reduce(reduce, head_flat) if head_flat is not None else None
        for finish in pending:
            finish()
        gram = gram_matrix(grads)
        if torch.isfinite(gram).all():
            coefficients, logs = self.combine(gram)
            self.last_weights.copy_(coefficients)
        else:  # an AMP overflow step (the scaler skips it): the plain sum, and nothing learnt from it
            coefficients, logs = torch.ones(len(ordered), dtype=torch.float64), {}
        accumulate_flat(shared, coefficients.to(grads.device, grads.dtype) @ grads, owned=True)
        if head_done is not None:
            accumulate_flat(heads, head_done())
        norms = (gram.diagonal().clamp_min(0).sqrt() / grad_scale).tolist()
        logs.update({f"gradnorm/{name}": float(v) for name, v in zip(self.task_names, norms, strict=True)})
        logs.update({f"weight/{k}": v for k, v in self.current_weights().items()})
        return logs

    def _gradient_buffer(self, tasks: int, shared: Sequence[nn.Parameter]) -> Tensor:
        """One (T, P) buffer for the per-task shared gradients, kept between steps (no re-allocation per step)."""
        size = sum(p.numel() for p in shared)
        ref = shared[0]
        buf = self._grad_rows
        if buf is None or buf.shape != (tasks, size) or buf.dtype != ref.dtype or buf.device != ref.device:
            buf = self._grad_rows = torch.empty(tasks, size, dtype=ref.dtype, device=ref.device)
        return buf

    def current_weights(self) -> dict[str, float]:
        """The coefficient of each task's gradient in the last update (1 for all before the first step)."""
        return dict(zip(self.task_names, self.last_weights.tolist(), strict=True))


def _task_gradient(
    loss: Tensor,
    shared: Sequence[nn.Parameter],
    heads: Sequence[nn.Parameter],
    *,
    out: Tensor,
    head_sum: Sequence[Tensor],
    retain_graph: bool,
) -> None:
    """Write d loss / d shared into the row ``out`` and add d loss / d heads to ``head_sum``."""
    if not loss.requires_grad:
        out.zero_()
        return
    grads = torch.autograd.grad(loss, [*shared, *heads], retain_graph=retain_graph, allow_unused=True)
    offset = 0
    for p, g in zip(shared, grads[: len(shared)], strict=True):
        dst = out[offset : offset + p.numel()]
        offset += p.numel()
        if g is None:
            dst.zero_()
        else:
            dst.copy_(g.reshape(-1))
    for acc, g in zip(head_sum, grads[len(shared) :], strict=True):
        if g is not None:
            acc.add_(g)


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
    ordinary parameters: the loop adds them to the optimizer in their own group (no weight decay, learning rate
    ``optim.weighting_lr``: at the network's learning rate they barely move, see docs/weighting.md).
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


@register_weighting("gradnorm")
class GradNorm(LossWeighting):
    """GradNorm (Chen et al., ICML 2018): learn weights so that each task's weighted gradient norm tracks
    ``mean norm * r_i ** alpha``, r_i = relative inverse training rate (L_i(t)/L_i(0) over its mean).

    Norms are taken on the shared representation (the backbone output the heads read, ``features``): one small
    backward per task through the heads, then one ordinary backward of ``sum_i w_i L_i``, so a step costs about
    what ``equal`` costs. The paper measures on the last shared layer's weights to save compute; the
    representation is the cheaper choice its authors and LibMTL (``rep_grad``) also offer. Without ``features``
    (e.g. under torch.compile, where the representation is inside the compiled graph) the norms fall back to the
    gradients on all shared parameters (one full backward per task).

    The weights are ``T * softmax(logits)`` and the logits follow Adam (betas 0.9/0.999, learning rate ``lr``) on
    the paper's L_grad = sum_i |w_i n_i - mean(w n) r_i^alpha| with norms n divided by their mean (a constant
    factor: same minimiser, and Adam's step does not depend on the gradients' scale, so ranks and scales agree).
    This is LibMTL's parametrisation; a fixed-size step on the weights themselves made them jitter by +-75 % around
    a small target. A task with a zero gradient this step (no labelled sample in the batch) is left out of the
    balance: its weight and Adam state do not change, and the others keep their total. alpha = 1.5 is the
    paper's NYUv2 setting.
    """

    needs_features: ClassVar[bool] = True
    BETAS: ClassVar[tuple[float, float]] = (0.9, 0.999)  # Adam's defaults (Kingma & Ba 2015), as LibMTL uses

    def __init__(self, *, task_names: Sequence[str], alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(task_names=task_names)
        if alpha < 0 or not lr > 0:
            raise ConfigError(f"weighting gradnorm: need alpha >= 0 and lr > 0, got alpha={alpha}, lr={lr}")
        self.alpha, self.lr = float(alpha), float(lr)
        n = len(self.task_names)
        self.register_buffer("logits", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("exp_avg", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("exp_avg_sq", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("initial_losses", torch.full((n,), float("nan"), dtype=torch.float64))
        self._pending: tuple[Tensor, Tensor] | None = None

    def loss_weights(self) -> Tensor:
        return (len(self.task_names) * torch.softmax(self.logits, 0)).float()

    def before_backward(
        self,
        ordered: Sequence[Tensor],
        *,
        features: Tensor | None,
        shared_params: Sequence[nn.Parameter],
        grad_scale: float,
        reduce: Reduce | None,
    ) -> None:
        sq = torch.stack([self._squared_norm(loss * grad_scale, features, shared_params, reduce) for loss in ordered])
        sq = sq / grad_scale**2
        stats = torch.cat([sq, torch.stack([loss.detach().double() for loss in ordered])])
        if reduce is not None:
            # The representation is per sample, so the mean over ranks of the per-rank squared norms is the global
            # squared norm times a constant (the world size), which the normalisation by the mean norm removes.
            # (Fallback norms are global already; averaging equal values leaves them as they are.)
            stats = reduce(stats)
        self._pending = (stats[: len(ordered)].cpu(), stats[len(ordered) :].cpu())

    @staticmethod
    def _squared_norm(
        loss: Tensor, features: Tensor | None, shared_params: Sequence[nn.Parameter], reduce: Reduce | None
    ) -> Tensor:
        """||d loss / d features||^2, or without features ||d loss / d shared||^2 of the rank-averaged gradient."""
        zero = torch.zeros((), dtype=torch.float64, device=loss.device)
        if not loss.requires_grad:
            return zero
        if features is None:
            flat = flat_grad(loss, shared_params, retain_graph=True)
            return (reduce(flat) if reduce is not None else flat).double().square().sum()
        (grad,) = torch.autograd.grad(loss, [features], retain_graph=True, allow_unused=True)
        return zero if grad is None else grad.double().square().sum()

    def after_backward(self) -> None:
        if self._pending is not None:
            sq, losses = self._pending
            self._pending = None
            self._update(sq.clamp_min(0).sqrt(), losses)

    def _update(self, norms: Tensor, losses: Tensor) -> None:
        """One Adam step of the logits on L_grad over the tasks with a gradient (float64, on the CPU)."""
        if not (torch.isfinite(norms).all() and torch.isfinite(losses).all()):
            return  # an AMP overflow step: the scaler skips it, the weights must not learn from it either
        init = self.initial_losses
        fresh = ~torch.isfinite(init) & (losses > 0)
        init[fresh] = losses[fresh]
        active = (norms > 0) & (losses > 0) & torch.isfinite(init)
        if int(active.sum()) < 2:
            return  # nothing to balance
        logits = self.logits[active].clone().requires_grad_(True)
        total = float(len(self.task_names) * torch.softmax(self.logits, 0)[active].sum())  # the active tasks' share
        w = total * torch.softmax(logits, 0)
        n = norms[active] / norms[active].mean()
        ratio = losses[active] / init[active]
        weighted = w * n
        target = (weighted.mean() * (ratio / ratio.mean()).pow(self.alpha)).detach()
        (grad,) = torch.autograd.grad((weighted - target).abs().sum(), logits)
        self.adam_steps += 1
        (b1, b2), t = self.BETAS, int(self.adam_steps)
        m = self.exp_avg[active] * b1 + (1 - b1) * grad
        v = self.exp_avg_sq[active] * b2 + (1 - b2) * grad.square()
        self.exp_avg[active], self.exp_avg_sq[active] = m, v
        step = self.lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + 1e-8)
        new = logits.detach() - step
        # Shift within the active group so its log-sum-exp (hence its total weight, and every other weight) stays.
        self.logits[active] = new - torch.logsumexp(new, 0) + torch.logsumexp(logits.detach(), 0)


# ----------------------------------------------------------------------------------------------- gradient surgery


@register_weighting("pcgrad")
class PCGrad(GradientWeighting):
    """PCGrad (Yu et al., NeurIPS 2020): project each task gradient off the normal plane of every other task's
    gradient it conflicts with (negative dot product), in a random order, then sum.

    Computed on the Gram matrix: a projected gradient is kept as coefficients over the original task gradients,
    ``g_i' = sum_k C_ik g_k``, so ``g_i' . g_j = (C G)_ij`` and a projection only changes ``C_ij``; the update is
    ``sum_k (sum_i C_ik) g_k``. Same arithmetic as the sequential algorithm, O(T^3) instead of O(T^2 P).
    The order comes from a generator seeded by (seed, step), identical on every rank and after a resume.
    """

    def __init__(self, *, task_names: Sequence[str], seed: int = 0) -> None:
        super().__init__(task_names=task_names)
        self.seed = int(seed)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def combine(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.step))
        self.step += 1
        n = gram.shape[0]
        g = gram.numpy()
        sq = np.maximum(np.diag(g), 1e-300)
        coef = np.eye(n)
        for i in range(n):
            for j in torch.randperm(n, generator=gen).tolist():
                if j == i:
                    continue
                dot = coef[i] @ g[:, j]
                if dot < 0:
                    coef[i, j] -= dot / sq[j]
        active = np.diag(g) > 0
        pairs = int(active.sum()) * (int(active.sum()) - 1) / 2
        conflicts = int((np.triu(g, 1)[np.ix_(active, active)] < 0).sum())
        return torch.from_numpy(coef.sum(0)), {"pcgrad/conflict_fraction": conflicts / pairs if pairs else 0.0}


@register_weighting("cagrad")
class CAGrad(GradientWeighting):
    """Conflict-averse gradient descent (Liu et al., NeurIPS 2021).

    d = g0 + (c ||g0|| / ||g_w||) g_w, where g0 is the mean task gradient and g_w = sum_i w_i g_i with w on the
    simplex minimising g_w . g0 + c ||g0|| ||g_w|| (solved on the T x T Gram matrix with SLSQP, as in the authors'
    code), then divided by 1 + c^2 (their ``rescale=1``). c = 0.4 is the paper's NYUv2/Cityscapes setting.
    We multiply by T so that without conflicts (c = 0) the step equals the sum of the task gradients, i.e. the
    same scale as ``equal`` and ``pcgrad``. The update is built from coefficients, d = sum_i a_i g_i with
    a_i = (1 + T lam w_i) / (1 + c^2), lam = c ||g0|| / ||g_w||, norms from the Gram matrix.

    Tasks with a zero gradient this step (no labelled sample in the batch) are left out of the solve (and T counts
    only the others): otherwise all weight goes to the empty task, whose g_w = 0 makes the objective 0.
    """

    def __init__(self, *, task_names: Sequence[str], c: float = 0.4) -> None:
        super().__init__(task_names=task_names)
        if c < 0:
            raise ConfigError(f"weighting cagrad: c must be >= 0, got {c}")
        self.c = float(c)

    def combine(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        g = gram.numpy()
        n = g.shape[0]
        active = np.flatnonzero(np.diag(g) > 0)
        if self.c == 0 or not np.isfinite(g).all() or active.size == 0:
            return torch.ones(n, dtype=torch.float64), {}
        sub = g[np.ix_(active, active)]
        w = self._solve(sub) if active.size > 1 else np.ones(1)
        g0_norm = math.sqrt(max(float(sub.mean()), 0.0))
        gw_norm = math.sqrt(max(float(w @ sub @ w), 0.0))
        lam = self.c * g0_norm / (gw_norm + 1e-12)
        coef = np.full(n, 1.0 / (1 + self.c**2))
        coef[active] = (1 + active.size * lam * w) / (1 + self.c**2)
        return torch.from_numpy(coef), {}

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
