"""Run configuration: frozen dataclasses, loaded from YAML, overridden with ``key=value`` strings, saved per run.

Why dataclasses and not a free dict: every field has a type and a default, so a typo in a YAML file or a ``--set``
override is an error naming the field instead of a silently ignored key, and the resolved config that a run saves
holds everything needed to rebuild the model (backbone, tasks, image size, normalisation) from the run folder alone.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxrmtl import labels
from cxrmtl.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """Which images the network sees and how the uint8 cache is turned into floats on the device."""

    image_size: int = 224
    val_fraction: float = labels.DEFAULT_VAL_FRACTION
    split_seed: int = labels.DEFAULT_SPLIT_SEED
    pixel_mean: float = labels.PIXEL_MEAN
    pixel_std: float = labels.PIXEL_STD
    num_workers: int = 0
    cache_workers: int = 0  # 0 = let data.cache choose
    # Data-efficiency experiments (docs/ablation.md): keep only this fraction of the training split's positive labels
    # of ``rare_findings``; the others are masked (unlabelled, not negative). val and test keep every label.
    rare_positive_fraction: float = 1.0  # 1 = every label (the findings are not touched)
    rare_findings: tuple[str, ...] = labels.RARE_FINDINGS


@dataclass(frozen=True)
class ModelConfig:
    """The shared network: any timm backbone name, optional pretrained init (True = timm hub, or a local file)."""

    backbone: str = "densenet121"
    pretrained: bool | str = False
    allow_random_init: bool = False  # pretrained weights asked for but unavailable: random init instead of an error
    drop_rate: float = 0.0
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False


@dataclass(frozen=True)
class TasksConfig:
    """Which tasks share the network and how classification losses treat class imbalance."""

    specs: tuple[str, ...] = ("findings",)
    loss: str = "bce"  # bce | focal | asl (see cxrmtl.tasks)
    pos_weight: bool = False  # weight positives by training prevalence (neg/pos), per output unit
    pos_weight_max: float = 0.0  # cap for very rare classes (0 = no cap)
    loss_kwargs: dict[str, float] = field(default_factory=dict)  # e.g. gamma for focal, gamma_neg/clip for ASL
    regression_loss: str = "huber"  # age: huber | smooth_l1 | l1 | mse (cxrmtl.tasks.losses)
    regression_kwargs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightingConfig:
    """How the per-task losses become one update (cxrmtl.train.weighting registry)."""

    method: str = "equal"
    weights: dict[str, float] = field(default_factory=dict)  # static per-task weights for "equal"
    kwargs: dict[str, float] = field(default_factory=dict)  # method options, e.g. temperature for dwa, alpha gradnorm


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``lr * min_lr_ratio``."""

    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    # warm-up as a fraction of the run's optimizer steps (0 = use warmup_steps): scales with epochs and batch size,
    # like one-cycle's pct_start (0.2 in bench/learnability.py; bench/bench_recipe.py measured it, BENCHMARKS.md)
    warmup_fraction: float = 0.0
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    # lr of weighting parameters (uncertainty's log-variances); 0 = same as lr. At a network lr (1e-4..3e-3) they
    # barely move; 0.03 reaches known noise variances in a few hundred steps with ~1-2 % jitter (docs/weighting.md).
    weighting_lr: float = 0.03


@dataclass(frozen=True)
class AugmentConfig:
    """Batched augmentation on the device. No vertical flip (never seen in chest films); horizontal flip off by
    default because it moves the heart to the right side (situs inversus is rare, so it creates unrealistic images)."""

    enabled: bool = True
    scale: tuple[float, float] = (0.85, 1.0)  # random resized crop: area fraction kept
    ratio: tuple[float, float] = (0.9, 1.1)  # aspect ratio range of the crop
    rotate_deg: float = 7.0
    translate: float = 0.05  # fraction of the image side
    brightness: float = 0.1  # additive, in units of the [0, 1] intensity range
    contrast: float = 0.1  # multiplicative, 1 +- contrast
    hflip: float = 0.0  # probability


@dataclass(frozen=True)
class TrainConfig:
    """The loop: length, batch, precision, checkpoints, model selection."""

    epochs: int = 10
    batch_size: int = 32  # global batch: split evenly over the ranks of a distributed run
    eval_batch_size: int = 64  # per rank
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit)
    amp: str = "auto"  # auto (bf16 on GPU, off on CPU) | bf16 | fp16 | off
    ema_decay: float = 0.0  # 0 disables the weight EMA
    checkpoint_every: int = 500  # optimizer steps between mid-epoch checkpoints (0 = only at epoch ends)
    checkpoint_minutes: float = 10.0  # also save last.pt when this long has passed since the last save (0 = never)
    select_metric: str = "auto"  # "val/<task>/<metric>", or auto = the first task's primary metric
    select_mode: str = "auto"  # auto (from the task's higher_is_better) | max | min
    early_stop_patience: int = 0  # epochs without improvement before stopping (0 = never)
    deterministic: bool = True  # deterministic algorithms (exact resume on CPU)
    progress: bool = True
    log_every: int = 50  # optimizer steps between step records in log.jsonl / TensorBoard (0 = epoch records only)
    # optimizer steps between measurements of the per-task gradient norms on the shared backbone (train/gradnorm/*):
    # each costs one extra backward per task, so keep it sparse on CPU (0 = never)
    grad_norm_every: int = 50
    cpu_threads: int = 0  # torch.set_num_threads on CPU; 0 = leave the default


@dataclass(frozen=True)
class Config:
    """A full training run."""

    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------------------------------
# typed conversion of plain values (YAML or --set strings) onto the dataclass fields


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise ConfigError(f"{where}: expected true/false, got {value!r}")


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _to_int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""))
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _to_float(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected a number, got {value!r}")


def _to_str(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        # YAML 1.1 reads a bare off/on (also no/yes) as a boolean: `amp: off` and `train.amp=off` mean the word.
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    raise ConfigError(f"{where}: expected a string, got {value!r}")


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _split_list(value: Any, where: str) -> list[Any]:
    if isinstance(value, str):  # --set tasks.specs=findings,age
        return [part.strip() for part in value.strip("[]").split(",") if part.strip()]
    if isinstance(value, Sequence):
        return list(value)
    raise ConfigError(f"{where}: expected a list, got {value!r}")


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Convert ``value`` to the annotated type ``hint``, raising ConfigError naming ``where``."""
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=where)
    if hint in _SCALARS:
        return _SCALARS[hint](value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        items = _split_list(value, where)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(items))
        if len(items) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(items)} ({value!r})")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(items, args, strict=True)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_to_str(k, where): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, args, where)
    raise ConfigError(f"{where}: unsupported field type {hint!r}")  # programming error in this module


def _convert_union(value: Any, args: tuple[Any, ...], where: str) -> Any:
    # bool | str (model.pretrained): true/false words are booleans, anything else a path string.
    if bool in args and (isinstance(value, bool) or (isinstance(value, str) and value.lower() in _BOOL_WORDS)):
        return _to_bool(value, where)
    for arg in args:
        if arg is not bool:
            return _convert(value, arg, where)
    raise ConfigError(f"{where}: cannot convert {value!r}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: Any, *, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrongly typed values raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(sorted(names))})")
    prefix = "" if where == "config" else f"{where}."
    values = {name: _convert(data[name], hints[name], f"{prefix}{name}") for name in data}
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (lists for tuples) suitable for YAML/JSON."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------------------------
# overrides and files


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into the key path and a YAML-parsed value (so lists and mappings work too)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.load(raw, Loader=UniqueKeyLoader) if raw.strip() else ""  # a SafeLoader
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Return a copy of ``cfg`` with each ``dotted.key=value`` applied and typed; unknown keys raise ConfigError."""
    data = to_dict(cfg)
    for text in overrides:
        parts, value = parse_override(text)
        _set_path(data, Config, parts, value, text)
    return from_dict(Config, data)


def _set_path(data: dict[str, Any], cls: type, parts: list[str], value: Any, text: str) -> None:
    """Set ``parts`` inside the plain-dict image of dataclass ``cls``; dict fields accept one more key level."""
    hints = _hints(cls)
    head = parts[0]
    if head not in hints:
        raise ConfigError(f"--set {text!r}: unknown key {head!r} (known: {', '.join(sorted(hints))})")
    hint = hints[head]
    if len(parts) == 1:
        data[head] = value
    elif dataclasses.is_dataclass(hint):
        _set_path(data[head], hint, parts[1:], value, text)
    elif typing.get_origin(hint) is dict and len(parts) == 2:
        data[head] = {**data[head], parts[1]: value}
    else:
        raise ConfigError(f"--set {text!r}: {head!r} is not a section")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config file, apply overrides, validate.

    Every way the file can be wrong (missing, a folder, unreadable, not UTF-8, invalid YAML, a key given twice, an
    unknown key, a value out of range) raises a one-line ConfigError naming the file (and line, where YAML knows it).
    """
    path = Path(path)
    cfg = apply_overrides(_parse(read_config_text(path), where=str(path)), overrides)
    validate(cfg)
    return cfg


def read_config_text(path: Path) -> str:
    """The text of config file ``path``; unreadable or non-UTF-8 files raise a one-line ConfigError naming it."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
                          "save the config as UTF-8") from None


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key given twice in one mapping is an error instead of the last one
    silently winning (``lr`` twice in a config would otherwise train with whichever came last).

    Keys brought in by a YAML merge (``<<: *base``) may still be overridden: only a mapping's own keys are compared.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {first.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def yaml_error_message(exc: yaml.YAMLError, where: str) -> str:
    """``where:line:column: invalid YAML: problem`` on one line (PyYAML's own text spans 4 to 8 lines)."""
    mark = getattr(exc, "problem_mark", None)
    place = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{problem} ({context})" if context and "duplicate key" not in problem else problem
    return " ".join(f"{place}: invalid YAML: {detail}".split())


def _parse(text: str, *, where: str) -> Config:
    """YAML text -> Config (not yet validated: overrides may still change it); errors name ``where``."""
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_message(exc, where)) from exc
    try:
        return from_dict(Config, data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def dump_config(cfg: Config) -> str:
    """YAML text of the resolved config (what a run saves as config.yaml)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_from_yaml_text(text: str, *, where: str) -> Config:
    """Parse a saved config.yaml (e.g. in a run folder) back into a Config."""
    cfg = _parse(text, where=where)
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# value checks the type system cannot express

AMP_MODES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")
SELECT_MODES: tuple[str, ...] = ("auto", "max", "min")

_CHECKS: tuple[tuple[str, Any, str], ...] = (
    ("data.image_size", lambda c: c.data.image_size >= 16, "must be >= 16"),
    ("data.val_fraction", lambda c: 0.0 < c.data.val_fraction < 1.0, "must be in (0, 1)"),
    ("data.pixel_std", lambda c: c.data.pixel_std > 0, "must be > 0"),
    ("data.num_workers", lambda c: c.data.num_workers >= 0, "must be >= 0"),
    ("tasks.specs", lambda c: len(c.tasks.specs) > 0, "must name at least one task"),
    ("tasks.specs", lambda c: len(set(c.tasks.specs)) == len(c.tasks.specs), "must not repeat a task"),
    ("optim.lr", lambda c: c.optim.lr > 0, "must be > 0"),
    ("optim.weight_decay", lambda c: c.optim.weight_decay >= 0, "must be >= 0"),
    ("optim.warmup_steps", lambda c: c.optim.warmup_steps >= 0, "must be >= 0"),
    ("optim.warmup_fraction", lambda c: 0.0 <= c.optim.warmup_fraction < 1.0, "must be in [0, 1)"),
    ("optim.min_lr_ratio", lambda c: 0.0 <= c.optim.min_lr_ratio <= 1.0, "must be in [0, 1]"),
    ("optim.grad_clip", lambda c: c.optim.grad_clip >= 0, "must be >= 0"),
    ("augment.scale", lambda c: 0 < c.augment.scale[0] <= c.augment.scale[1] <= 1, "must be 0 < lo <= hi <= 1"),
    ("augment.ratio", lambda c: 0 < c.augment.ratio[0] <= c.augment.ratio[1], "must be 0 < lo <= hi"),
    ("augment.hflip", lambda c: 0.0 <= c.augment.hflip <= 1.0, "must be a probability"),
    ("train.epochs", lambda c: c.train.epochs >= 1, "must be >= 1"),
    ("train.batch_size", lambda c: c.train.batch_size >= 1, "must be >= 1"),
    ("train.eval_batch_size", lambda c: c.train.eval_batch_size >= 1, "must be >= 1"),
    ("train.max_steps", lambda c: c.train.max_steps >= 0, "must be >= 0"),
    ("train.amp", lambda c: c.train.amp in AMP_MODES, f"must be one of {', '.join(AMP_MODES)}"),
    ("train.ema_decay", lambda c: 0.0 <= c.train.ema_decay < 1.0, "must be in [0, 1)"),
    ("train.checkpoint_every", lambda c: c.train.checkpoint_every >= 0, "must be >= 0"),
    ("train.checkpoint_minutes", lambda c: c.train.checkpoint_minutes >= 0, "must be >= 0"),
    ("train.select_mode", lambda c: c.train.select_mode in SELECT_MODES, f"must be one of {', '.join(SELECT_MODES)}"),
    ("train.early_stop_patience", lambda c: c.train.early_stop_patience >= 0, "must be >= 0"),
    ("train.log_every", lambda c: c.train.log_every >= 0, "must be >= 0"),
    ("train.grad_norm_every", lambda c: c.train.grad_norm_every >= 0, "must be >= 0"),
    ("train.cpu_threads", lambda c: c.train.cpu_threads >= 0, "must be >= 0"),
    ("train.select_metric", lambda c: c.train.select_metric == "auto" or c.train.select_metric.startswith("val/"),
     "must be 'auto' or start with 'val/'"),
    ("tasks.pos_weight_max", lambda c: c.tasks.pos_weight_max >= 0, "must be >= 0"),
)


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first field whose value is out of range."""
    for name, check, problem in _CHECKS:
        if not check(cfg):
            raise ConfigError(f"{name}: {problem} (got {_get(cfg, name)!r})")
    check_rare_positive_cut(cfg.data.rare_findings, cfg.data.rare_positive_fraction)


def check_rare_positive_cut(findings: Sequence[str], fraction: float, *, where: str = "data") -> None:
    """Raise ConfigError (naming ``where``.rare_findings / .rare_positive_fraction) for an impossible label cut."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 < fraction <= 1.0:
        raise ConfigError(f"{where}.rare_positive_fraction: must be in (0, 1], got {fraction!r}")
    unknown = [f for f in findings if f not in labels.FINDING_INDEX]
    if unknown:
        raise ConfigError(f"{where}.rare_findings: unknown finding(s) {', '.join(map(repr, unknown))}; findings are "
                          f"{', '.join(labels.FINDINGS)}")
    if len(set(findings)) != len(findings):
        raise ConfigError(f"{where}.rare_findings: names a finding twice ({', '.join(findings)})")
    if fraction < 1.0 and not findings:
        raise ConfigError(f"{where}.rare_findings: empty, so rare_positive_fraction {fraction} would cut nothing")


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
