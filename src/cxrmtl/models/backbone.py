"""Backbone factory: any timm model with one input channel and no classifier, optionally pre-initialised.

``pretrained`` is False (random init), True (timm's published ImageNet weights: the local Hugging Face cache
first, then the hub when it answers within seconds, never a hang on a machine without internet; ``HF_HUB_OFFLINE=1``
means the cache only), or a path to a local weights file (timm/torchvision state dict, safetensors, or a cxrmtl
checkpoint whose model keys start with ``backbone.``). RGB first-layer weights are folded to one channel with
timm's ``adapt_input_conv``.

Weights that were asked for and cannot be had are an error (``PretrainedWeightsError``, one line naming the way
out), not a silent random init: a model trained from scratch by accident scores well below the published ones and
nothing else would say why. ``allow_random_init=True`` (config ``model.allow_random_init``) turns the error into a
``PretrainedWeightsWarning`` and random init, for users who mean it.
"""

from __future__ import annotations

import difflib
import os
import socket
import warnings
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from cxrmtl.errors import CheckpointError, ConfigError, PretrainedWeightsError

# Seconds to wait for the weights host before falling back to random init (DNS failure returns at once).
HUB_PROBE_TIMEOUT_S: float = 3.0
# Key prefixes added by DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
# Containers in which training scripts (ours: "model") nest the state dict.
_STATE_KEYS: tuple[str, ...] = ("model", "state_dict", "model_state_dict", "ema")


class PretrainedWeightsWarning(UserWarning):
    """Pretrained weights were requested but could not be obtained; random init was allowed, so it is used."""


def create_backbone(
    name: str, *, pretrained: bool | str | Path = False, allow_random_init: bool = False
) -> nn.Module:
    """Create timm model ``name`` with ``in_chans=1, num_classes=0`` (forward returns pooled features)."""
    import timm

    _check_name(name)
    model = timm.create_model(name, pretrained=False, in_chans=1, num_classes=0)
    pretrained = _normalise(pretrained)
    if isinstance(pretrained, Path):
        load_backbone_weights(model, pretrained)
    elif pretrained:
        _load_published_weights(model, name, allow_random_init=allow_random_init)
    return model


def _check_name(name: object) -> None:
    import timm

    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=5)
        raise ConfigError(f"model.backbone: {name!r} is not a timm model; close matches: {close}")


def _normalise(pretrained: bool | str | Path) -> bool | Path:
    """False, True, or a weights file path (config strings "true"/"false"/"none"/"" mean the booleans)."""
    if isinstance(pretrained, str):
        word = pretrained.strip().lower()
        if word in ("", "false", "none"):
            return False
        return True if word == "true" else Path(pretrained)
    return pretrained if isinstance(pretrained, Path) else bool(pretrained)


def pretrained_source(name: str, pretrained: bool | str | Path, *, allow_random_init: bool = False) -> str:
    """Where ``create_backbone`` will take the initial weights from, checked without loading them (cheap: called
    before an hour of cache building so that a missing file or being offline fails first). Raises what
    ``create_backbone`` would raise: ``CheckpointError`` for a missing file, ``PretrainedWeightsError`` when timm's
    weights cannot be had and random init is not allowed."""
    _check_name(name)
    pretrained = _normalise(pretrained)
    if pretrained is False:
        return "random init (model.pretrained: false)"
    if isinstance(pretrained, Path):
        if not pretrained.is_file():
            raise CheckpointError(f"{pretrained}: pretrained weights file not found")
        return f"local file {pretrained}"
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    hub_id, url = (cfg.hf_hub_id, cfg.url) if cfg is not None else (None, None)
    cached = _cached_hub_file(hub_id) if hub_id else None
    if cached is not None:
        return f"timm weights {hub_id} from the local Hugging Face cache ({cached})"
    reason = _unavailable_reason(hub_id, url)
    if reason is None:
        return f"timm weights {hub_id or url}, downloaded on first use"
    if allow_random_init:
        return f"random init (timm weights unavailable: {reason}; model.allow_random_init: true)"
    raise _unavailable_error(name, reason)


def _unavailable_reason(hub_id: str | None, url: str | None) -> str | None:
    """Why timm's weights cannot be downloaded now (None when the host answers)."""
    if not hub_id and not url:
        return "timm publishes no pretrained weights for it"
    if hub_id and _hub_offline():
        return "HF_HUB_OFFLINE is set and no copy is in the local Hugging Face cache"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co") if hub_id else (url or "")).netloc
    if not _reachable(host):
        return f"{host} cannot be reached (offline?) and no copy is in the local Hugging Face cache"
    return None


def _hub_offline() -> bool:
    # huggingface_hub's own switch (its docs: "HF_HUB_OFFLINE=1": no HTTP calls to the Hub, the cache only).
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _unavailable_error(name: str, reason: str) -> PretrainedWeightsError:
    return PretrainedWeightsError(
        f"model.pretrained: timm's ImageNet weights for backbone {name!r} are unavailable: {reason}; set "
        "model.pretrained to a local weights file (docs/reproduce.md), or set model.allow_random_init=true "
        "(--set model.allow_random_init=true) to train from random init on purpose"
    )


def _load_published_weights(model: nn.Module, name: str, *, allow_random_init: bool) -> None:
    """timm's weights for ``name``: cached file, else download when the host answers, else an error (or a warning
    and random init when ``allow_random_init``)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    cached = _cached_hub_file(hub_id) if hub_id else None
    if cached is not None:
        load_backbone_weights(model, cached)
        return
    reason = _unavailable_reason(hub_id, url)
    if reason is None:
        import timm

        try:
            weights = timm.create_model(name, pretrained=True, in_chans=1, num_classes=0).state_dict()
        except Exception as exc:  # a third-party hub fails in many ways; each becomes the one clear error below
            reason = f"download failed ({type(exc).__name__}: {exc})"
        else:
            model.load_state_dict(weights)
            return
    if not allow_random_init:
        raise _unavailable_error(name, reason)
    warnings.warn(
        f"pretrained weights for backbone {name!r} are unavailable: {reason}; starting from random init "
        "(model.allow_random_init: true). Set model.pretrained to a local weights file to use one.",
        PretrainedWeightsWarning,
        stacklevel=4,
    )


def _cached_hub_file(hub_id: str) -> Path | None:
    """Path of the weights of ``hub_id`` already in the local Hugging Face cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo_id, _, revision = hub_id.partition("@")
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    return None


def _reachable(host: str) -> bool:
    hostname, _, port = host.partition(":")
    try:
        with socket.create_connection((hostname, int(port or 443)), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a weights file (safetensors or torch pickle read with ``weights_only``), unwrapped."""
    if not path.is_file():
        raise CheckpointError(f"{path}: pretrained weights file not found")
    try:
        with path.open("rb") as fh:
            magic = fh.read(2)
        # torch.save writes a zip ("PK") or, in the legacy format, a pickle (0x80); anything else is safetensors.
        if path.suffix == ".safetensors" or magic[:1] not in (b"P", b"\x80"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for truncated or foreign files
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    return _unwrap(state, path)


def _unwrap(state: object, path: Path) -> dict[str, Tensor]:
    while isinstance(state, Mapping) and not _is_tensor_dict(state):
        inner = next((state[k] for k in _STATE_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointError(f"{path}: no state dict found (top-level keys {sorted(map(str, state))[:10]})")
        state = inner
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    tensors = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        tensors[key] = value
    if any(k.startswith("backbone.") for k in tensors):  # a cxrmtl MultiTaskNet: keep the backbone only
        tensors = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
    return tensors


def _is_tensor_dict(state: Mapping) -> bool:
    return bool(state) and all(isinstance(v, Tensor) for v in state.values())


def load_backbone_weights(model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model``: classifier keys dropped, RGB stem folded to gray; mismatch -> CheckpointError."""
    from timm.models import adapt_input_conv

    state = read_state_dict(path)
    own = model.state_dict()
    matched: dict[str, Tensor] = {}
    wrong_shape: list[str] = []
    for key, value in state.items():
        if key not in own:
            continue  # classifier / auxiliary heads of the source model
        target = own[key]
        if value.dim() == 4 and target.dim() == 4 and value.shape[1] != target.shape[1]:
            value = adapt_input_conv(target.shape[1], value)
        if value.shape != target.shape:
            wrong_shape.append(f"{key} has shape {tuple(value.shape)}, backbone expects {tuple(target.shape)}")
            continue
        matched[key] = value
    missing = sorted(set(own) - set(matched) - {w.split(" ")[0] for w in wrong_shape})
    if missing or wrong_shape:
        raise CheckpointError(
            f"{path}: weights do not fit this backbone: {len(missing)} tensors missing (e.g. {missing[:3]}), "
            f"{len(wrong_shape)} of another shape (e.g. {wrong_shape[:2]})"
        )
    model.load_state_dict(matched)
