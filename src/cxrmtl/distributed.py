"""Process-group setup and the few collectives the loop needs; the same code runs with and without torchrun.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; with WORLD_SIZE > 1 we join the group
(NCCL on GPU, gloo on CPU), otherwise everything is a no-op on one process. Validation predictions are gathered
with their dataset row numbers and de-duplicated, so the padding a distributed eval sampler adds never counts twice.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from cxrmtl.errors import ConfigError

_TIMEOUT = datetime.timedelta(minutes=30)  # cache building on rank 0 may keep the other ranks waiting


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}: expected an integer, got {raw!r}") from exc


DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")  # what every --device accepts (cli/_options.py lists the same)


def resolve_device(name: str | torch.device, *, what: str = "--device") -> torch.device:
    """The device ``name`` means, the same for every command: ``auto`` is CUDA when a GPU is visible, else the CPU.

    ``cuda`` without a usable GPU is refused here (a ConfigError naming ``what``) instead of failing later deep
    inside torch with a driver message. ``cuda`` resolves to the current CUDA device; under torchrun
    ``init_distributed`` then binds each process to its LOCAL_RANK.
    """
    if isinstance(name, torch.device):
        name = str(name)
    kind = name.split(":", 1)[0]
    if kind not in DEVICES or (kind != "cuda" and ":" in name):
        raise ConfigError(f"{what}: {name!r} is not one of {', '.join(DEVICES)}")
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what}: cuda requested but no CUDA GPU is available ({_cuda_note()}); "
                          "use --device auto or cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{what}: {name!r} requested but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return dev


def _cuda_note() -> str:
    """Why torch sees no GPU, as far as it can tell: a CPU-only build, or no visible device."""
    if torch.version.cuda is None:
        return f"this torch {torch.__version__} is a CPU-only build"
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and not hidden.strip():
        return "CUDA_VISIBLE_DEVICES is empty"
    return f"torch {torch.__version__} with CUDA {torch.version.cuda} finds no device"


def init_distributed(*, device: str = "auto") -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1 and pick the device (``resolve_device``)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    use_cuda = resolve_device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=_TIMEOUT, **kwargs)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


def cleanup(ctx: DistContext) -> None:
    """Leave the process group (idempotent)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def mean_reducer(ctx: DistContext) -> Callable[[Tensor], Tensor] | None:
    """The ``reduce`` callable given to gradient weighting: average a tensor over ranks in place (None on 1 process).

    ``reduce.start(tensor)`` is the asynchronous form (see ``cxrmtl.train.weighting.start_reduce``).
    """
    if not ctx.distributed:
        return None

    def reduce(tensor: Tensor) -> Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(ctx.world_size)
        return tensor

    def start(tensor: Tensor) -> Callable[[], Tensor]:
        """Launch the all-reduce asynchronously; the returned callable waits, averages and returns ``tensor``."""
        work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True)

        def finish() -> Tensor:
            work.wait()
            return tensor.div_(ctx.world_size)

        return finish

    reduce.start = start  # type: ignore[attr-defined]  # used by gradient weighting to overlap per-task reductions
    return reduce


def max_param_divergence(module: torch.nn.Module, ctx: DistContext) -> float:
    """Largest absolute difference of any parameter or buffer between this rank and rank 0 (0.0 on one process).

    Logged at the end of a distributed run: DDP keeps replicas identical only if every rank applied the same
    updates, so a non-zero value exposes a broken reduction (e.g. a weighting method that skipped ``reduce``).
    """
    if not ctx.distributed:
        return 0.0
    flat = torch.cat([t.detach().reshape(-1).double() for t in module.state_dict().values()
                      if t.dtype.is_floating_point]).to(_collective_device(ctx))
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    diff = (flat - reference).abs().max() if flat.numel() else torch.zeros((), device=flat.device)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def mean_over_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average a dict of floats over ranks (same keys on every rank)."""
    if not ctx.distributed or not values:
        return dict(values)
    keys = sorted(values)
    buf = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_collective_device(ctx))
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    buf /= ctx.world_size
    return dict(zip(keys, buf.tolist(), strict=True))


def broadcast_object(obj: object, ctx: DistContext) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device(ctx: DistContext) -> torch.device:
    return ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_by_row(rows: np.ndarray, arrays: dict[str, np.ndarray], ctx: DistContext) -> tuple[np.ndarray, dict]:
    """Gather per-rank (rows, arrays) on every rank, sort by row and drop duplicate rows (eval-sampler padding)."""
    if ctx.distributed:
        parts: list[tuple[np.ndarray, dict[str, np.ndarray]] | None] = [None] * ctx.world_size
        dist.all_gather_object(parts, (rows, arrays))
        rows = np.concatenate([p[0] for p in parts])
        arrays = {k: np.concatenate([p[1][k] for p in parts]) for k in arrays}
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    keep = np.ones(len(rows), dtype=bool)
    keep[1:] = rows[1:] != rows[:-1]
    return rows[keep], {k: v[order][keep] for k, v in arrays.items()}
