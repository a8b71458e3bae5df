"""The training loop: one shared network, many tasks, the same code on one CPU or many GPUs (torchrun).

``train(cfg, data_root=..., out=...)`` wires index -> cache -> loaders -> tasks -> model -> weighting -> optimizer and
runs epochs of ``train_step`` followed by validation on the patient-disjoint val split (the test split is never
touched here). Checkpoints hold the complete loop state, and every source of randomness in a step is derived from
(seed, global step, rank), so ``resume`` after a kill at any point gives the same weights as an uninterrupted run
on CPU (tests/train/test_checkpoint_resume.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrmtl import distributed as dist_utils
from cxrmtl.config import Config, to_dict
from cxrmtl.errors import CheckpointError, ConfigError, RunError
from cxrmtl.runs import checkpoint as ckpt
from cxrmtl.runs.build import build_model, build_tasks_for, train_pos_weight
from cxrmtl.runs.layout import RunDir, label_map
from cxrmtl.train.augment import BatchAugment, step_generator
from cxrmtl.train.ema import ModelEMA
from cxrmtl.train.optim import build_optimizer, build_scheduler
from cxrmtl.version import code_version

AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoopState:
    """Where the loop stands; saved in every checkpoint so a resumed run continues exactly."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best_value: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    loss_sums: dict[str, float] = field(default_factory=dict)  # this epoch, for the epoch mean (DWA, logs)
    log_sums: dict[str, float] = field(default_factory=dict)  # weighting's logged values, summed this epoch
    log_counts: dict[str, int] = field(default_factory=dict)  # steps that logged each value (norms: some steps)
    batches: int = 0  # batches summed in loss_sums this epoch
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainSummary:
    """What a finished (or stopped) training returns."""

    run: Path
    steps: int
    epochs: int
    stop_reason: str
    select_metric: str
    best_value: float | None
    best_epoch: int
    final_metrics: dict[str, float]
    images_per_second: float


def default_cache_dir(*, data_root: Path, out: Path, size: int) -> Path:
    """Where the preprocessing cache goes without ``--cache``: next to the run folder, keyed by data root and size.

    RUN-adjacent (not ROOT-adjacent) because the data folder may be read-only; runs in the same parent folder on the
    same data and size share it.
    """
    root = Path(data_root).resolve()
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:8]
    return Path(out).resolve().parent / ".cxrmtl-cache" / f"{root.name}-{digest}-s{size}"


def _mix_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**31 - 1)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """auto -> bf16 on CUDA (no loss scaling needed), off on CPU (bf16 there only pays on AMX/AVX512-BF16 CPUs).

    fp16 (with loss scaling) runs on CPU too (torch >= 2.x autocast and GradScaler support it), slowly on CPUs
    without native fp16 arithmetic; it is allowed so that the fp16 path can be checked without a GPU.
    """
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "off"
    return AMP_DTYPES[mode]


class Trainer:
    """Holds the wired components of one run; ``fit()`` trains and returns a TrainSummary."""

    def __init__(
        self, cfg: Config, *, data_root: Path, out: Path, cache_dir: Path | None = None, resume: bool = False,
        ctx: dist_utils.DistContext | None = None,
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx or dist_utils.DistContext()
        self.run = RunDir(out)
        self.resume = resume
        self.data_root = Path(data_root)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(
            data_root=self.data_root, out=self.run.path, size=cfg.data.image_size)
        self.state = LoopState()
        self._check_out()
        self._check_batch()
        self._setup_determinism()
        self._setup_data()
        self._setup_model()
        self._setup_optim()
        self._start_run()

    # -- setup -----------------------------------------------------------------------------------------------

    def _check_out(self) -> None:
        """Refuse early (before an hour of cache building) what _start_run would refuse later."""
        if not self.resume and self.run.has_run():
            raise RunError(f"{self.run.path}: already holds a run; pass --resume to continue it or choose another "
                           "--out")
        if self.resume and not self.run.last.is_file():
            raise CheckpointError(f"{self.run.last}: nothing to resume (no checkpoint in {self.run.path})")
        if not self.resume:  # a missing weights file or no way to timm's weights fails now, not after the cache
            from cxrmtl.models import pretrained_source

            m = self.cfg.model
            pretrained_source(m.backbone, m.pretrained, allow_random_init=m.allow_random_init)

    def _check_batch(self) -> None:
        if self.cfg.train.batch_size % self.ctx.world_size:
            raise ConfigError(f"train.batch_size: {self.cfg.train.batch_size} (global) is not divisible by the "
                              f"world size {self.ctx.world_size}")
        self.per_rank_batch = self.cfg.train.batch_size // self.ctx.world_size

    def _setup_determinism(self) -> None:
        t = self.cfg.train
        if t.cpu_threads > 0:
            torch.set_num_threads(t.cpu_threads)
        torch.manual_seed(self.cfg.seed)
        np.random.seed(self.cfg.seed % 2**32)
        if t.deterministic:
            # cuBLAS needs a fixed workspace to be deterministic (PyTorch "Reproducibility" notes).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = True

    def _setup_data(self) -> None:
        from cxrmtl.data.cache import build_cache, open_cache
        from cxrmtl.data.loader import make_loader
        from cxrmtl.data.nih import load_index

        d = self.cfg.data
        self.index = load_index(self.data_root, val_fraction=d.val_fraction, split_seed=d.split_seed)
        if self.ctx.is_main:
            build_cache(self.index, self.cache_dir, size=d.image_size, workers=d.cache_workers or None,
                        progress=self.cfg.train.progress)
        dist_utils.barrier(self.ctx)
        self.cache = open_cache(self.cache_dir)
        common = {"cache": self.cache, "index": self.index, "rank": self.ctx.rank, "world_size": self.ctx.world_size,
                  "num_workers": d.num_workers}
        self.train_loader = make_loader(split="train", batch_size=self.per_rank_batch, shuffle=True,
                                        seed=self.cfg.seed, drop_last=True, **common)
        self.val_loader = make_loader(split="val", batch_size=self.cfg.train.eval_batch_size, shuffle=False,
                                      drop_last=False, **common)

    def _setup_model(self) -> None:
        from cxrmtl.train.weighting import build_weighting

        cfg, dev = self.cfg, self.ctx.device
        self.tasks = build_tasks_for(cfg, pos_weight=train_pos_weight(cfg, self.index))
        self.labels = label_map(self.tasks)
        model = build_model(cfg, self.tasks, pretrained=False if self.resume else None)  # resume: checkpoint weights
        if cfg.model.sync_bn and self.ctx.distributed:
            if dev.type != "cuda":
                raise ConfigError("model.sync_bn: torch's SyncBatchNorm runs on CUDA only; turn it off on CPU")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(dev)
        self.channels_last = cfg.model.channels_last  # CPU effect measured in bench/results/train.md
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = ModelEMA(model, decay=cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        w = cfg.weighting
        kwargs: dict[str, Any] = dict(w.kwargs)
        if w.weights:
            kwargs["weights"] = dict(w.weights)
        self.weighting = build_weighting(w.method, task_names=[t.name for t in self.tasks], **kwargs).to(dev)
        self._features: list[torch.Tensor] = []  # the shared representation of this step, for weighting.features
        if self.weighting.needs_features and not cfg.model.compile:  # compiled: the output is not in the graph
            model.backbone.register_forward_hook(self._keep_features)
        self.ddp = None
        if self.ctx.distributed:
            ids = [dev.index] if dev.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        net = self.ddp or self.model
        self.forward_model = torch.compile(net) if cfg.model.compile else net
        self.shared_params = [p for p in model.shared_parameters() if p.requires_grad]
        self.all_params = [p for p in model.parameters() if p.requires_grad]
        self.reduce = dist_utils.mean_reducer(self.ctx)
        self.augment = BatchAugment(cfg.augment, mean=cfg.data.pixel_mean, std=cfg.data.pixel_std)
        self.amp_dtype = resolve_amp(cfg.train.amp, dev)

    def _setup_optim(self) -> None:
        cfg = self.cfg
        self.weighting_params = [p for p in self.weighting.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, cfg.optim, extra=self.weighting_params)
        self.total_steps = cfg.train.epochs * len(self.train_loader)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, total_steps=self.total_steps)
        self.scaler = torch.amp.GradScaler(self.ctx.device.type, enabled=self.amp_dtype == torch.float16)

    def _start_run(self) -> None:
        if not self.resume:
            if self.ctx.is_main:
                self.run.create(self.cfg, self.tasks, world_size=self.ctx.world_size)
            dist_utils.barrier(self.ctx)
            return
        if not self.run.last.is_file():
            raise CheckpointError(f"{self.run.last}: nothing to resume (no checkpoint in {self.run.path})")
        self._load_state(ckpt.load_checkpoint(self.run.last, map_location=self.ctx.device))
        dist_utils.barrier(self.ctx)
        if self.ctx.is_main:
            self.run.trim_log(max_step=self.state.step)
            self.run.update_config(self.cfg)  # a resume may change epochs / max_steps (RESUME_MUTABLE)

    # -- checkpoints -----------------------------------------------------------------------------------------

    def _state_dict(self, *, full: bool) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "config": to_dict(self.cfg),
            "labels": self.labels,
            "code_version": code_version(),
            "epoch": self.state.epoch,
            "batch_in_epoch": self.state.batch_in_epoch,
            "step": self.state.step,
            "metrics": self.state.history[-1] if self.state.history else {},
            "world_size": self.ctx.world_size,
        }
        if full:
            state.update({
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "weighting": self.weighting.state_dict(),
                "loop": dataclasses.asdict(self.state),
                "rng": ckpt.rng_state(),
            })
        return state

    def save(self, *, best: bool = False) -> None:
        """last.pt (full state) on rank 0; best.pt (weights + metadata) when ``best``."""
        if self.ctx.is_main:
            ckpt.save_checkpoint(self.run.last, self._state_dict(full=True))
            if best:
                ckpt.save_checkpoint(self.run.best, self._state_dict(full=False))
        dist_utils.barrier(self.ctx)

    def _load_state(self, state: dict[str, Any]) -> None:
        path = self.run.last
        ckpt.check_compatible(state, self.cfg, self.labels, path=path)
        loop = LoopState(**state["loop"])
        if loop.batch_in_epoch and int(state.get("world_size", 1)) != self.ctx.world_size:
            raise CheckpointError(f"{path}: saved mid-epoch by {state.get('world_size')} process(es); resume it with "
                                  f"the same number (now {self.ctx.world_size})")
        try:
            self.model.load_state_dict(state["model"])
            if self.ema:
                self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.weighting.load_state_dict(state["weighting"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: state does not fit this run ({type(exc).__name__}: {exc})") from exc
        ckpt.set_rng_state(state["rng"])
        self.state = loop

    # -- one step --------------------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.amp_dtype)

    def _losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        dev, st = self.ctx.device, self.state
        torch.manual_seed(_mix_seed(self.cfg.seed, st.step, self.ctx.rank))  # dropout etc.: depends on step only
        gen = step_generator(seed=self.cfg.seed, step=st.step, rank=self.ctx.rank)
        x = self.augment(batch["image"].to(dev, non_blocking=True), generator=gen)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        targets = {k: v.to(dev, non_blocking=True) for k, v in batch["targets"].items()}
        masks = {k: v.to(dev, non_blocking=True) for k, v in batch["masks"].items()}
        with self._autocast():
            outputs = self.forward_model(x)
        return {t.name: t.loss(outputs[t.name].float(), *t.select(targets, masks)) for t in self.tasks}

    def _keep_features(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        """Forward hook on the backbone: keep the training forward's output (the representation heads read)."""
        if output.requires_grad:
            self._features[:] = [output]

    def _grad_scale(self) -> float:
        """The loss scale this step. ``scaler.scale`` (not ``get_scale``) also creates the per-step state that
        ``unscale_``/``step``/``update`` need; the weighting multiplies its losses by the same value."""
        if not self.scaler.is_enabled():
            return 1.0
        return float(self.scaler.scale(torch.ones((), device=self.ctx.device)))

    def _norm_step(self) -> bool:
        """Whether this step also measures per-task gradient norms (costs one extra backward per task)."""
        every = self.cfg.train.log_every
        return bool(every) and (self.state.step + 1) % every == 0

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Forward, weighted backward, clip, optimizer/scheduler/EMA step; returns losses and weighting logs."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.weighting_params:
            p.grad = None
        per_task = self.ddp is not None and self.weighting.needs_per_task_grads
        with self.ddp.no_sync() if per_task else contextlib.nullcontext():
            losses = self._losses(batch)
            features = self._features.pop() if self._features else None
            # The weighting multiplies by grad_scale itself and averages, via `reduce`, what DDP's hooks do not
            # (per-task shared gradients, heads under no_sync, its own parameters).
            logs = self.weighting.backward(losses, shared_params=self.shared_params, all_params=self.all_params,
                                           grad_scale=self._grad_scale(), reduce=self.reduce,
                                           with_grad_norms=self._norm_step(), features=features)
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.all_params, clip)) if clip > 0 else float("nan")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema:
            self.ema.update(self.model)
        values = {f"loss/{k}": float(v.detach()) for k, v in losses.items()}
        values.update({k: float(v) for k, v in logs.items()})
        values["grad_norm"] = grad_norm
        return values

    # -- epochs ----------------------------------------------------------------------------------------------

    def _max_steps(self) -> int:
        return self.cfg.train.max_steps or 0

    def _reached_max(self) -> bool:
        limit = self._max_steps()
        return bool(limit) and self.state.step >= limit

    def _batches(self) -> Iterator[dict[str, Any]]:
        loader = self.train_loader
        loader.set_epoch(self.state.epoch)
        loader.set_start_batch(self.state.batch_in_epoch)
        batches: Any = iter(loader)
        if self.ctx.is_main and self.cfg.train.progress:
            from tqdm import tqdm

            batches = tqdm(batches, total=len(loader), initial=self.state.batch_in_epoch,
                           desc=f"epoch {self.state.epoch + 1}/{self.cfg.train.epochs}", leave=False)
        return batches

    def _accumulate(self, values: dict[str, float]) -> None:
        st = self.state
        for key, value in values.items():
            sums = st.loss_sums if key.startswith("loss/") else st.log_sums
            sums[key] = sums.get(key, 0.0) + value
            if not key.startswith("loss/"):
                st.log_counts[key] = st.log_counts.get(key, 0) + 1
        st.batches += 1

    def train_epoch(self) -> bool:
        """Train until the epoch ends (True) or max_steps stops it (False); checkpoints every N steps."""
        self.forward_model.train()
        every = self.cfg.train.checkpoint_every
        started = time.perf_counter()
        count = 0
        for batch in self._batches():
            if self._reached_max():
                break
            values = self.train_step(batch)
            self.state.step += 1
            self.state.batch_in_epoch += 1
            count += int(batch["image"].shape[0])
            self._accumulate(values)
            self._log_step(values)
            at_end = self.state.batch_in_epoch == len(self.train_loader)
            if every and self.state.step % every == 0 and not at_end:
                self.save()
        self._images_per_s = count * self.ctx.world_size / max(time.perf_counter() - started, 1e-9)
        return self.state.batch_in_epoch == len(self.train_loader)

    def _log_step(self, values: dict[str, float]) -> None:
        every = self.cfg.train.log_every
        if self.ctx.is_main and every and self.state.step % every == 0:
            record = {"event": "step", "epoch": self.state.epoch, "step": self.state.step,
                      "lr": self.scheduler.get_last_lr()[0], **values}
            self.run.log(record)
            self.run.scalars({f"train/{k}": v for k, v in values.items()}, step=self.state.step)

    def _epoch_means(self) -> dict[str, float]:
        st = self.state
        means = {k: v / max(st.batches, 1) for k, v in st.loss_sums.items()}
        means.update({k: v / max(st.log_counts.get(k, 1), 1) for k, v in st.log_sums.items()})
        return dist_utils.mean_over_ranks(means, self.ctx)

    def validate(self) -> dict[str, float]:
        """Metrics on the val split (EMA weights when enabled), gathered over ranks without padding duplicates."""
        from cxrmtl.runs.predictions import predict_batches

        model = self.ema.module if self.ema else self.model
        preds = predict_batches(model, self.tasks, self.val_loader, device=self.ctx.device,
                                mean=self.cfg.data.pixel_mean, std=self.cfg.data.pixel_std,
                                amp_dtype=self.amp_dtype, channels_last=self.channels_last, ctx=self.ctx)
        metrics: dict[str, float] = {}
        for task in self.tasks:
            for key, value in task.metrics(preds.outputs[task.name], preds.targets[task.name],
                                           preds.masks[task.name]).items():
                metrics[f"val/{task.name}/{key}"] = float(value)
        return metrics

    # -- model selection -------------------------------------------------------------------------------------

    def select_metric(self) -> tuple[str, bool]:
        """(metric key, higher is better) from train.select_metric / select_mode."""
        t = self.cfg.train
        if t.select_metric == "auto":
            task = self.tasks[0]
            key = f"val/{task.name}/{task.primary_metric}"
        else:
            key = t.select_metric
        if t.select_mode != "auto":
            return key, t.select_mode == "max"
        by_name = {task.name: task for task in self.tasks}
        name = key.split("/")[1] if key.count("/") >= 2 else ""
        if name not in by_name:
            raise ConfigError(f"train.select_metric: {key!r} names no task of this run ({', '.join(by_name)})")
        task = by_name[name]
        higher = task.higher_is_better if key.endswith(f"/{task.primary_metric}") else not key.endswith("_years")
        return key, higher

    def _improved(self, metrics: dict[str, float]) -> bool:
        key, higher = self.select_metric()
        if key not in metrics:
            raise ConfigError(f"train.select_metric: {key!r} is not among the validation metrics "
                              f"({', '.join(sorted(metrics))})")
        value, best = metrics[key], self.state.best_value
        if best is None or (math.isnan(best) and not math.isnan(value)):
            return True
        if math.isnan(value):
            return False
        return value > best if higher else value < best

    def end_epoch(self, *, complete: bool) -> dict[str, float]:
        """Validation, logging, best-model selection, early-stopping bookkeeping and the epoch checkpoint."""
        st = self.state
        means = self._epoch_means()
        if complete:
            task_losses = {k.removeprefix("loss/"): v for k, v in means.items() if k.startswith("loss/")}
            self.weighting.end_epoch(st.epoch, task_losses)
        metrics = self.validate()
        record = {"epoch": st.epoch, "step": st.step, "complete_epoch": complete,
                  "lr": self.scheduler.get_last_lr()[0], "images_per_s": self._images_per_s,
                  **{f"train/{k}": v for k, v in means.items()}, **metrics}
        improved = self._improved(metrics)
        if improved:
            st.best_value, st.best_epoch, st.bad_epochs = metrics[self.select_metric()[0]], st.epoch, 0
        elif complete:
            st.bad_epochs += 1
        st.history.append(record)
        if complete:
            st.epoch, st.batch_in_epoch, st.batches = st.epoch + 1, 0, 0
            st.loss_sums, st.log_sums, st.log_counts = {}, {}, {}
        if self.ctx.is_main:
            self.run.log({"event": "epoch", **record})
            self.run.scalars({k: v for k, v in record.items() if "/" in k or k == "lr"}, step=st.step)
        self.save(best=improved)
        return record

    # -- the whole run ---------------------------------------------------------------------------------------

    def fit(self) -> TrainSummary:
        """Train to the end (epochs, max_steps or early stopping) and return the summary."""
        self._images_per_s = 0.0
        reason = "epochs"
        try:
            while self.state.epoch < self.cfg.train.epochs:
                if self._reached_max():
                    reason = "max_steps"
                    break
                complete = self.train_epoch()
                self.end_epoch(complete=complete)
                if not complete:
                    reason = "max_steps"
                    break
                patience = self.cfg.train.early_stop_patience
                if patience and self.state.bad_epochs >= patience:
                    reason = "early_stopping"
                    break
        finally:
            if self.ctx.is_main:
                self.run.close()
        return self._summary(reason)

    def _summary(self, reason: str) -> TrainSummary:
        st = self.state
        final = {k: v for k, v in (st.history[-1] if st.history else {}).items() if k.startswith("val/")}
        key = self.select_metric()[0]
        summary = TrainSummary(run=self.run.path, steps=st.step, epochs=st.epoch, stop_reason=reason,
                               select_metric=key, best_value=st.best_value, best_epoch=st.best_epoch,
                               final_metrics=final, images_per_second=self._images_per_s)
        divergence = dist_utils.max_param_divergence(self.model, self.ctx)
        if self.ctx.is_main:
            self.run.log({"event": "end", "step": st.step, "stop_reason": reason, "best_epoch": st.best_epoch,
                          "best_value": st.best_value, "select_metric": key, "world_size": self.ctx.world_size,
                          "max_rank_divergence": divergence})
        return summary


def train(
    cfg: Config, *, data_root: Path, out: Path, cache_dir: Path | None = None, resume: bool = False,
    device: str = "auto",
) -> TrainSummary:
    """Train ``cfg`` on the NIH-layout folder ``data_root`` into run folder ``out`` (torchrun-aware)."""
    ctx = dist_utils.init_distributed(device=device)
    try:
        return Trainer(cfg, data_root=data_root, out=out, cache_dir=cache_dir, resume=resume, ctx=ctx).fit()
    finally:
        dist_utils.cleanup(ctx)


def format_summary(summary: TrainSummary) -> str:
    """A markdown table of the final validation metrics (primary metrics first) plus the selection result."""
    lines = ["| metric | value |", "|---|---|"]
    keys = sorted(summary.final_metrics, key=lambda k: (k.count("/") > 2, k))
    for key in keys:
        if "/auroc/" in key or "/ap/" in key:
            continue  # per-class values are in log.jsonl; the table keeps the summaries
        lines.append(f"| {key} | {summary.final_metrics[key]:.4f} |")
    best = "n/a" if summary.best_value is None else f"{summary.best_value:.4f}"
    lines.append(f"| best {summary.select_metric} (epoch {summary.best_epoch + 1}) | {best} |")
    lines.append(f"| steps / epochs / stop | {summary.steps} / {summary.epochs} / {summary.stop_reason} |")
    return "\n".join(lines)
