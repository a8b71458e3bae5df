"""The training loop: one shared network, many tasks, the same code on one CPU or many GPUs (torchrun).

``train(cfg, data_root=..., out=...)`` wires index -> cache -> loaders -> tasks -> model -> weighting -> optimizer and
runs epochs of ``train_step`` followed by validation on the patient-disjoint val split (the test split is never
touched here). Checkpoints hold the complete loop state, and every source of randomness in a step is derived from
(seed, global step, rank), so ``resume`` after a kill at any point gives the same weights as an uninterrupted run
on CPU (tests/train/test_checkpoint_resume.py).

``train`` holds a lock on the run folder (a second writer is refused at once, naming the holder), records the data in
RUN/data.json (a resume on other data is refused by its fingerprint), and runs inside ``training_process_state``: the
caller's determinism flags, thread count and random states are given back when it returns. Progress goes through
``logging`` (logger ``cxrmtl.train.loop``): one line per epoch with the task losses, the selection metric, images/s
and the time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrmtl import distributed as dist_utils
from cxrmtl.config import Config, to_dict
from cxrmtl.errors import CheckpointError, ConfigError, RunError
from cxrmtl.fsio import exclusive_lock
from cxrmtl.runs import checkpoint as ckpt
from cxrmtl.runs.build import build_model, build_tasks_for, train_pos_weight
from cxrmtl.runs.data import RunData, open_run_data
from cxrmtl.runs.layout import RunDir, label_map
from cxrmtl.train.augment import BatchAugment, step_generator
from cxrmtl.train.ema import ModelEMA
from cxrmtl.train.optim import build_optimizer, build_scheduler
from cxrmtl.train.process import seeded_rng, training_process_state
from cxrmtl.version import code_version

log = logging.getLogger(__name__)
DIST_TIME_CHECK_STEPS = 10
RESUME_HINT = "a run resumes only on the data it was trained on; train on this data with a new --out"

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
    already_finished: bool = False  # a --resume of a run that had ended: nothing was trained


def _mix_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**31 - 1)


# CPU features under which oneDNN runs bf16 convolutions natively (torch.cpu's probes; private, hence getattr)
_CPU_BF16_PROBES: tuple[str, ...] = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: CUDA with bf16, or a CPU with AVX512-BF16 or AMX.

    Elsewhere bf16 autocast is emulated and slower than fp32. Measured on the 2-core AVX512-BF16 machine
    (BENCHMARKS.md, "Training recipe"): a resnet18 step at 128 px costs 0.54x its fp32 time.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in _CPU_BF16_PROBES)
    return False


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """auto -> bf16 autocast where the device computes bf16 natively (``native_bf16``), fp32 elsewhere.

    fp16 (with loss scaling) runs on CPU too (torch >= 2.x autocast and GradScaler support it), slowly on CPUs
    without native fp16 arithmetic; it is allowed so that the fp16 path can be checked without a GPU.
    """
    if mode == "auto":
        mode = "bf16" if native_bf16(device) else "off"
    return AMP_DTYPES[mode]


class Trainer:
    """Holds the wired components of one run; ``fit()`` trains and returns a TrainSummary."""

    def __init__(
        self, cfg: Config, *, data_root: Path | None, out: Path, cache_dir: Path | None = None, resume: bool = False,
        ctx: dist_utils.DistContext | None = None,
    ) -> None:
        """Wire a run. Process-wide settings are left alone: ``train`` wraps this in ``training_process_state``."""
        self.cfg = cfg
        self.ctx = ctx or dist_utils.DistContext()
        self.run = RunDir(out)
        self.resume = resume
        self.data_root = Path(data_root) if data_root is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.state = LoopState()
        self._fit_started = time.perf_counter()
        self._last_save = time.monotonic()
        self._epoch_seconds = 0.0
        self._images_per_s = 0.0
        self._check_out()
        if self.ctx.is_main:
            self.run.remove_temp_files()
        self._check_batch()
        self._setup_data()
        with seeded_rng(cfg.seed):  # weight init depends on the seed only, not on the caller's random state
            self._setup_model()
        self._setup_optim()
        self._start_run()

    # -- setup -----------------------------------------------------------------------------------------------

    def _check_out(self) -> None:
        """Refuse early (before an hour of cache building) what _start_run would refuse later.

        ``--resume`` of a run with no checkpoint (killed before its first one) starts it again from step 0.
        """
        if not self.resume and self.run.has_run():
            raise RunError(f"{self.run.path}: already holds a run; pass --resume to continue it or choose another "
                           "--out")
        if self.data_root is None and not (self.resume and self.run.has_run()):
            raise ConfigError("--data: needed to start a run (a --resume reads it from RUN/data.json)")
        self.restart = self.resume and not self.run.last.is_file()
        if self.restart and self.ctx.is_main:
            why = ("has no checkpoint yet (it stopped before its first one)" if self.run.has_run()
                   else "holds no run yet")
            log.info("%s: %s; starting from step 0", self.run.path, why)

    def _check_batch(self) -> None:
        if self.cfg.train.batch_size % self.ctx.world_size:
            raise ConfigError(f"train.batch_size: {self.cfg.train.batch_size} (global) is not divisible by the "
                              f"world size {self.ctx.world_size}")
        self.per_rank_batch = self.cfg.train.batch_size // self.ctx.world_size

    def _setup_data(self) -> None:
        from cxrmtl.data.labelcut import LabelCut
        from cxrmtl.data.loader import make_loader

        self.data: RunData = open_run_data(
            self.run.path, data=self.cfg.data, data_root=self.data_root, cache_dir=self.cache_dir,
            progress=self.cfg.train.progress, ctx=self.ctx, mismatch_hint=RESUME_HINT)
        self.index, self.cache = self.data.index, self.data.cache
        self.skipped = {split: self.data.unreadable(split) for split in ("train", "val")}
        if self.ctx.is_main and sum(self.skipped.values()):
            log.warning("%s: skipping %d unreadable images (train %d, val %d): their cache rows are marked bad in "
                        "%s/manifest.json", self.data.record.data_root, sum(self.skipped.values()),
                        self.skipped["train"], self.skipped["val"], self.data.record.cache_dir)
        common = {"cache": self.cache, "index": self.index, "rank": self.ctx.rank, "world_size": self.ctx.world_size,
                  "num_workers": self.cfg.data.num_workers}
        # data.rare_positive_fraction < 1: the training split's positives of data.rare_findings are partly masked
        # (data.labelcut); validation (and everything after training) keeps every label.
        self.label_cut = LabelCut.from_config(self.cfg.data, seed=self.cfg.seed)
        self.train_loader = make_loader(split="train", batch_size=self.per_rank_batch, shuffle=True,
                                        seed=self.cfg.seed, drop_last=True, label_cut=self.label_cut, **common)
        self.val_loader = make_loader(split="val", batch_size=self.cfg.train.eval_batch_size, shuffle=False,
                                      drop_last=False, **common)

    def _setup_model(self) -> None:
        from cxrmtl.train.weighting import build_weighting

        cfg, dev = self.cfg, self.ctx.device
        # Under a label cut the positive weights come from the labels training sees, not from the full index.
        samples = self.train_loader.samples
        seen = {k: (samples.targets[k], samples.masks[k]) for k in samples.targets} if self.label_cut else None
        self.tasks = build_tasks_for(cfg, pos_weight=train_pos_weight(cfg, self.index, train_targets=seen))
        self.labels = label_map(self.tasks)
        resuming = self.resume and not self.restart  # a resume takes its weights from the checkpoint
        model = build_model(cfg, self.tasks, pretrained=False if resuming else None)
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
        if not self.resume or self.restart:
            if self.ctx.is_main:
                self.run.create(self.cfg, self.tasks, world_size=self.ctx.world_size, restart=self.restart)
                self._record_data()
                self._record_label_cut()
            dist_utils.barrier(self.ctx)
            return
        self._load_state(ckpt.load_checkpoint(self.run.last, map_location=self.ctx.device))
        dist_utils.barrier(self.ctx)
        if self.ctx.is_main:
            self.run.trim_log(max_step=self.state.step)
            self.run.update_config(self.cfg)  # a resume may change epochs / max_steps (RESUME_MUTABLE)
            self._record_data()
            self._record_label_cut()

    def _record_label_cut(self) -> None:
        """RUN/label_cut.json when training sees reduced labels (what was cut, how many kept, which images); a run
        with every label has none (a restart with another config drops a stale one)."""
        from cxrmtl.data.labelcut import cut_record, describe_counts
        from cxrmtl.fsio import write_json_atomic
        from cxrmtl.runs.layout import LABEL_CUT_FILE

        path = self.run.path / LABEL_CUT_FILE
        if self.label_cut is None:
            path.unlink(missing_ok=True)
            return
        counts = self.train_loader.samples.cut
        names = self.index.table["image"].to_numpy()
        write_json_atomic(path, cut_record(self.label_cut, counts, image_names=names, split="train"))
        log.info("%s: reduced training labels (data.rare_positive_fraction %g, seed %d): positives kept/had %s; the "
                 "others are masked, val keeps every label (%s)", self.run.path, self.label_cut.fraction,
                 self.label_cut.seed, describe_counts(counts), LABEL_CUT_FILE)

    def _record_data(self) -> None:
        """Write RUN/data.json unless it already says the same (the fingerprint was checked in _setup_data)."""
        from cxrmtl.runs.data import write_data_record

        recorded = self.data.run_record
        if recorded is not None and recorded.same_data(self.data.record):
            return
        if recorded is None and self.resume and not self.restart:
            log.info("%s: records no data yet (trained before runs recorded their data); recording %s now",
                     self.run.path, self.data.record.data_root)
        write_data_record(self.run.path, self.data.record)

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
            })
        return state

    def save(self, *, best: bool = False) -> None:
        """last.pt (full state) on rank 0; best.pt (weights + metadata) when ``best``."""
        if self.ctx.is_main:
            ckpt.save_checkpoint(self.run.last, self._state_dict(full=True))
            if best:
                ckpt.save_checkpoint(self.run.best, self._state_dict(full=False))
        self._last_save = time.monotonic()
        dist_utils.barrier(self.ctx)

    def _save_due(self) -> bool:
        """True when ``train.checkpoint_minutes`` have passed since the last save (rank 0's clock decides)."""
        minutes = self.cfg.train.checkpoint_minutes
        if not minutes:
            return False
        due = time.monotonic() - self._last_save >= minutes * 60
        if self.ctx.distributed:
            # Every rank must join save()'s barrier, so rank 0's clock decides; asking costs a collective, so only
            # every DIST_TIME_CHECK_STEPS steps (a checkpoint lands at most that many steps late).
            if self.state.step % DIST_TIME_CHECK_STEPS:
                return False
            due = bool(dist_utils.broadcast_object(due, self.ctx))
        return due

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
        self.state = loop

    # -- one step --------------------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.amp_dtype)

    def _losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        dev, st = self.ctx.device, self.state
        gen = step_generator(seed=self.cfg.seed, step=st.step, rank=self.ctx.rank)
        x = self.augment(batch["image"].to(dev, non_blocking=True), generator=gen)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        targets = {k: v.to(dev, non_blocking=True) for k, v in batch["targets"].items()}
        masks = {k: v.to(dev, non_blocking=True) for k, v in batch["masks"].items()}
        # Dropout / drop-path draw from torch's default generator: a fork seeded by (seed, step, rank) only.
        with seeded_rng(_mix_seed(self.cfg.seed, st.step, self.ctx.rank), dev), self._autocast():
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
        every = self.cfg.train.grad_norm_every
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

    @contextlib.contextmanager
    def _batches(self) -> Iterator[Iterator[dict[str, Any]]]:
        """This epoch's batches (from the resume point), behind a progress bar that is gone when the block ends."""
        loader = self.train_loader
        loader.set_epoch(self.state.epoch)
        loader.set_start_batch(self.state.batch_in_epoch)
        if not (self.ctx.is_main and self.cfg.train.progress):
            yield iter(loader)
            return
        from tqdm import tqdm

        bar = tqdm(iter(loader), total=len(loader), initial=self.state.batch_in_epoch,
                   desc=f"epoch {self.state.epoch + 1}/{self.cfg.train.epochs}", leave=False)
        try:
            yield bar
        finally:
            bar.close()  # before the epoch line is logged, so the line is not drawn over

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
        with self._batches() as batches:
            for batch in batches:
                if self._reached_max():
                    break
                values = self.train_step(batch)
                self.state.step += 1
                self.state.batch_in_epoch += 1
                count += int(batch["image"].shape[0])
                self._accumulate(values)
                self._log_step(values)
                at_end = self.state.batch_in_epoch == len(self.train_loader)
                by_steps = bool(every) and self.state.step % every == 0
                if (by_steps or self._save_due()) and not at_end:
                    self.save()
        self._epoch_seconds = time.perf_counter() - started
        self._images_per_s = count * self.ctx.world_size / max(self._epoch_seconds, 1e-9)
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
                  "epoch_seconds": self._epoch_seconds, "skipped_unreadable": dict(self.skipped),
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
            log.info("%s", self.epoch_line(record))
        self.save(best=improved)
        return record

    def epoch_line(self, record: dict[str, Any]) -> str:
        """One line a user reads after the progress bar is gone: losses per task, the selection metric, speed, time."""
        epoch = int(record["epoch"]) + 1
        head = f"epoch {epoch}/{self.cfg.train.epochs}" + ("" if record["complete_epoch"] else " (partial)")
        losses = ", ".join(f"{k.removeprefix('train/loss/')} {v:.4f}" for k, v in record.items()
                           if k.startswith("train/loss/"))
        key = self.select_metric()[0]
        value = record.get(key)
        shown = "undefined" if value is None or math.isnan(value) else f"{value:.4f}"
        elapsed = time.perf_counter() - self._fit_started
        return (f"{head} step {record['step']}: loss {losses} | {key} {shown} | {record['images_per_s']:.1f} img/s | "
                f"{record['epoch_seconds']:.1f} s (total {_clock(elapsed)})")

    # -- the whole run ---------------------------------------------------------------------------------------

    def stop_reason(self) -> str | None:
        """Why the run should not train another epoch now (early_stopping, epochs, max_steps), or None."""
        st, t = self.state, self.cfg.train
        if t.early_stop_patience and st.bad_epochs >= t.early_stop_patience:
            return "early_stopping"
        if st.epoch >= t.epochs:
            return "epochs"
        if self._reached_max():
            return "max_steps"
        return None

    def _already_finished(self, reason: str | None) -> bool:
        """A resumed run that has nothing left to do and whose end was logged (rank 0 reads the log)."""
        finished = (reason is not None and self.resume and not self.restart and self.ctx.is_main
                    and self.run.end_record(step=self.state.step) is not None)
        return bool(dist_utils.broadcast_object(finished, self.ctx))

    def fit(self) -> TrainSummary:
        """Train to the end (epochs, max_steps or early stopping) and return the summary."""
        self._images_per_s = 0.0
        self._fit_started = time.perf_counter()
        self._last_save = time.monotonic()
        reason = self.stop_reason()
        if self._already_finished(reason):
            if self.ctx.is_main:
                log.info("%s: already finished at step %d (epoch %d); nothing to do", self.run.path,
                         self.state.step, self.state.epoch)
            return self._summary(reason or "epochs", already_finished=True)
        try:
            while reason is None:
                complete = self.train_epoch()
                self.end_epoch(complete=complete)
                reason = self.stop_reason() if complete else "max_steps"
        finally:
            if self.ctx.is_main:
                self.run.close()
        return self._summary(reason)

    def _summary(self, reason: str, *, already_finished: bool = False) -> TrainSummary:
        st = self.state
        final = {k: v for k, v in (st.history[-1] if st.history else {}).items() if k.startswith("val/")}
        key = self.select_metric()[0]
        summary = TrainSummary(run=self.run.path, steps=st.step, epochs=st.epoch, stop_reason=reason,
                               select_metric=key, best_value=st.best_value, best_epoch=st.best_epoch,
                               final_metrics=final, images_per_second=self._images_per_s,
                               already_finished=already_finished)
        if already_finished:
            return summary
        divergence = dist_utils.max_param_divergence(self.model, self.ctx)
        if self.ctx.is_main:
            self.run.log({"event": "end", "step": st.step, "stop_reason": reason, "best_epoch": st.best_epoch,
                          "best_value": st.best_value, "select_metric": key, "world_size": self.ctx.world_size,
                          "max_rank_divergence": divergence})
        return summary


def train(
    cfg: Config, *, data_root: Path | None = None, out: Path, cache_dir: Path | None = None, resume: bool = False,
    device: str = "auto",
) -> TrainSummary:
    """Train ``cfg`` on the NIH-layout folder ``data_root`` into run folder ``out`` (torchrun-aware).

    ``data_root`` / ``cache_dir`` may be left out with ``resume`` (RUN/data.json has them). While it runs, rank 0
    holds RUN/.run.lock: a second ``train`` on the same folder fails at once with RunError naming the holder. The
    caller's process-wide state (determinism flags, thread count, random states) is the same after it returns.
    """
    if data_root is None and not resume:
        raise ConfigError("--data: needed to start a run (a --resume reads it from RUN/data.json)")
    check_initial_weights(cfg, out=Path(out), resume=resume)
    ctx = dist_utils.init_distributed(device=device)
    try:
        with training_process_state(cfg.train), run_lock(Path(out), ctx):
            return Trainer(cfg, data_root=data_root, out=out, cache_dir=cache_dir, resume=resume, ctx=ctx).fit()
    finally:
        dist_utils.cleanup(ctx)


def check_initial_weights(cfg: Config, *, out: Path, resume: bool) -> None:
    """Fail now, before the run folder and an hour of cache building, when a run that starts from step 0 (a fresh
    start, or a resume of a run without a checkpoint) cannot get its initial weights: a missing weights file, or
    timm's weights unreachable offline without ``model.allow_random_init``. A resume takes them from last.pt."""
    if resume and RunDir(out).last.is_file():
        return
    from cxrmtl.models import pretrained_source

    m = cfg.model
    pretrained_source(m.backbone, m.pretrained, allow_random_init=m.allow_random_init)


@contextlib.contextmanager
def run_lock(out: Path, ctx: dist_utils.DistContext) -> Iterator[None]:
    """Rank 0 holds RUN/.run.lock for the block (created with the folder); the other ranks of the job do not."""
    if not ctx.is_main:
        yield
        return
    run = RunDir(out)
    run.prepare()
    with exclusive_lock(run.lock_path, what=str(out), error=RunError):
        yield


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


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
