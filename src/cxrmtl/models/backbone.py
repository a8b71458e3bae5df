"""Backbone factory: any timm model with one input channel and no classifier, optionally pre-initialised.

``pretrained`` is False (random init), True (timm's published weights: the local Hugging Face cache first, the
hub when it answers, otherwise a warning and random init, never a hang on a machine without internet), or a
path to a local weights file (timm/torchvision state dict, safetensors, or a cxrmtl checkpoint whose model keys
start with ``backbone.``). RGB first-layer weights are folded to one channel with timm's ``adapt_input_conv``.
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

from cxrmtl.errors import CheckpointError, ConfigError

# Seconds to wait for the weights host before falling back to random init (DNS failure returns at once).
HUB_PROBE_TIMEOUT_S: float = 3.0
# Key prefixes added by DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
# Containers in which training scripts (ours: "model") nest the state dict.
_STATE_KEYS: tuple[str, ...] = ("model", "state_dict", "model_state_dict", "ema")


class PretrainedWeightsWarning(UserWarning):
    """Pretrained weights were requested but could not be obtained; the backbone starts from random init."""


def create_backbone(name: str, *, pretrained: bool | str | Path = False) -> nn.Module:
    """Create timm model ``name`` with ``in_chans=1, num_classes=0`` (forward returns pooled features)."""
    import timm

    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=5)
        raise ConfigError(f"model.backbone: {name!r} is not a timm model; close matches: {close}")
    model = timm.create_model(name, pretrained=False, in_chans=1, num_classes=0)
    if isinstance(pretrained, str) and pretrained.strip().lower() in ("", "false", "none"):
        pretrained = False  # a config string meaning "no pretrained weights"
    if isinstance(pretrained, str) and pretrained.strip().lower() == "true":
        pretrained = True
    if isinstance(pretrained, str | Path):
        load_backbone_weights(model, Path(pretrained))
    elif pretrained:
        _load_published_weights(model, name)
    return model


def _load_published_weights(model: nn.Module, name: str) -> None:
    """timm's weights for ``name``: cached file, else download when the host answers, else warn (random init)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    cached = _cached_hub_file(hub_id) if hub_id else None
    if cached is not None:
        load_backbone_weights(model, cached)
        return
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co") if hub_id else (url or "")).netloc
    if not host:
        _warn(name, "timm publishes no pretrained weights for it")
        return
    if not _reachable(host):
        _warn(name, f"{host} cannot be reached (offline?) and no copy is in the local Hugging Face cache")
        return
    import timm

    try:
        weights = timm.create_model(name, pretrained=True, in_chans=1, num_classes=0).state_dict()
    except Exception as exc:  # any download/parse failure of a third-party hub must not kill the run
        _warn(name, f"download failed ({type(exc).__name__}: {exc})")
        return
    model.load_state_dict(weights)


def _warn(name: str, reason: str) -> None:
    warnings.warn(
        f"pretrained weights for backbone {name!r} are unavailable: {reason}; starting from random init. "
        "Set model.pretrained to a local weights file to use one.",
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
