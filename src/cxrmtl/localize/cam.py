"""Class activation maps (Grad-CAM, Grad-CAM++, HiResCAM) for one output of one task of a multitask network.

The maps come from ``pytorch-grad-cam``; ``CAM_METHODS`` names the methods a user can pick (``cxrmtl localize
--cam``), ``DEFAULT_CAM`` is the one measured best on the phantom's boxes (bench/bench_cam.py,
docs/localization.md).

``MultiTaskNet.forward`` returns a dict keyed by task; Grad-CAM wants a model that returns one tensor. ``TaskOutput``
wraps the network so that it returns ``model(x)[task]`` and ``ClassifierOutputTarget(j)`` then picks column j, i.e.
``model(x)[task][:, j]`` for finding j. The layers the CAM is taken from are found by a small registry of resolvers
(timm's ``feature_info`` first, the last 2-D convolution otherwise) unless the caller names them; with several layers
pytorch-grad-cam averages their maps (a fine stage for position, a deeper one for what the logit used).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from cxrmtl import labels
from cxrmtl.errors import EvaluationError


class TaskOutput(nn.Module):
    """Expose one task's output of a dict-returning network as a (B, K) tensor."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.model(x)
        if not isinstance(outputs, dict) or self.task not in outputs:
            names = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
            raise EvaluationError(f"task: the model has no output {self.task!r} (outputs: {names})")
        out = outputs[self.task]
        return out.unsqueeze(1) if out.ndim == 1 else out


def _feature_stages(model: nn.Module) -> list[tuple[nn.Module, int]]:
    """(module, reduction) of every feature stage a timm backbone declares in ``feature_info``, shallow to deep."""
    for module in model.modules():
        info = getattr(module, "feature_info", None)
        if not info:
            continue
        entries = info if isinstance(info, list) else info.get_dicts()
        stages = []
        for entry in entries:
            name = entry.get("module") if isinstance(entry, dict) else None
            if not name:
                continue
            try:
                stages.append((module.get_submodule(name), int(entry.get("reduction", 0))))
            except AttributeError:
                continue
        if stages:
            return stages
    return []


def _timm_feature_layers(
    model: nn.Module, *, image_size: int | None = None, min_side: int = 0, stages: int = 1
) -> list[nn.Module]:
    """The ``stages`` deepest timm feature stages whose maps have at least ``min_side`` cells a side at
    ``image_size``, shallow to deep (for a 128 px ResNet, ``min_side=8`` and ``stages=2``: ``layer2`` and
    ``layer3``); the last ``stages`` stages when no size is given or none is fine enough; [] without timm stages."""
    found = _feature_stages(model)
    if not found:
        return []
    if image_size and min_side:
        fine = [m for m, reduction in found if reduction and image_size // reduction >= min_side]
        if fine:
            return fine[-stages:]
    return [m for m, _ in found][-stages:]


def _last_conv(model: nn.Module) -> nn.Module | None:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def _last_conv_any(model: nn.Module, **_: object) -> list[nn.Module]:
    conv = _last_conv(model)
    return [conv] if conv is not None else []


# Tried in order; the first that finds a layer wins.
TARGET_LAYER_RESOLVERS: tuple[Callable[..., list[nn.Module]], ...] = (_timm_feature_layers, _last_conv_any)


def resolve_target_layers(
    model: nn.Module, *, layer: str | None = None, image_size: int | None = None, min_side: int = 0, stages: int = 1
) -> list[nn.Module]:
    """The modules whose activations the CAM weighs (their maps are averaged): ``layer`` (a dotted name, or several
    joined by ``+``) or the resolvers' choice, the ``stages`` deepest feature stages with at least ``min_side``
    cells a side at ``image_size`` (0: the last stages)."""
    if stages < 1:
        raise EvaluationError(f"stages: at least one layer to take a CAM from, got {stages}")
    if layer is not None:
        try:
            return [model.get_submodule(name) for name in layer.split("+")]
        except AttributeError as exc:
            raise EvaluationError(f"target layer: the model has no submodule {layer!r}") from exc
    for resolver in TARGET_LAYER_RESOLVERS:
        found = resolver(model, image_size=image_size, min_side=min_side, stages=stages)
        if found:
            return found
    raise EvaluationError("target layer: the model has no 2-D convolution or timm feature stage to take a CAM from")


def resolve_target_layer(
    model: nn.Module, *, layer: str | None = None, image_size: int | None = None, min_side: int = 0
) -> nn.Module:
    """The one module ``resolve_target_layers`` picks with ``stages=1``: the deepest stage fine enough."""
    return resolve_target_layers(model, layer=layer, image_size=image_size, min_side=min_side)[-1]


def _gradcam() -> type:
    from pytorch_grad_cam import GradCAM

    return GradCAM


def _gradcam_pp() -> type:
    from pytorch_grad_cam import GradCAMPlusPlus

    return GradCAMPlusPlus


def _hirescam() -> type:
    from pytorch_grad_cam import HiResCAM

    return HiResCAM


# Registry: name -> loader of the pytorch-grad-cam class (imported lazily: the package pulls in OpenCV).
# Grad-CAM: Selvaraju et al., ICCV 2017 (channel weights = spatial mean of the gradient); Grad-CAM++: Chattopadhay
# et al., WACV 2018 (higher-order weights, several instances); HiResCAM: Draelos & Carin 2020 (gradient times
# activation element-wise, no spatial averaging: faithful to what the logit used at each position).
CAM_METHODS: dict[str, Callable[[], type]] = {"gradcam": _gradcam, "gradcam++": _gradcam_pp, "hirescam": _hirescam}
DEFAULT_CAM = labels.LOC_DEFAULT_CAM


def cam_class(method: str) -> type:
    """The pytorch-grad-cam class of ``method`` (a ``CAM_METHODS`` name)."""
    if method not in CAM_METHODS:
        raise EvaluationError(f"cam: unknown method {method!r}; expected one of {', '.join(CAM_METHODS)}")
    return CAM_METHODS[method]()


def layer_name(
    model: nn.Module, *, layer: str | None = None, image_size: int | None = None, min_side: int = 0, stages: int = 1
) -> str:
    """The dotted names, joined by ``+``, of the modules ``resolve_target_layers`` picks (for reports)."""
    targets = resolve_target_layers(model, layer=layer, image_size=image_size, min_side=min_side, stages=stages)
    names = {id(module): name for name, module in model.named_modules()}
    return "+".join(names.get(id(t), "") for t in targets) or (layer or "")


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    *,
    task: str,
    columns: Sequence[int],
    layer: str | None = None,
    method: str = DEFAULT_CAM,
    min_side: int = labels.LOC_CAM_MIN_SIDE,
    stages: int = labels.LOC_CAM_STAGES,
) -> np.ndarray:
    """CAM maps (B, H, W) in [0, 1] at the input size; row b explains ``model(x)[task][b, columns[b]]``.

    ``method`` is a ``CAM_METHODS`` name; the map is the average of the (each min-max scaled) maps of the layers
    ``resolve_target_layers`` picks: by default the ``labels.LOC_CAM_STAGES`` deepest stages with at least
    ``labels.LOC_CAM_MIN_SIDE`` cells a side, the setting measured best on the phantom's boxes (the same maps
    for ``localize``, ``predict --heatmaps`` and the service). ``images`` is the float input the network expects
    (``data.loader.normalize`` of the uint8 cache pixels, with the run's ``data.pixel_mean``/``pixel_std``). Each
    map is min-max scaled by pytorch-grad-cam; a map that is zero everywhere means no positive evidence.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_type = cam_class(method)
    if images.ndim != 4:
        raise EvaluationError(f"images: expected a (B, C, H, W) batch, got {tuple(images.shape)}")
    if len(columns) != images.shape[0]:
        raise EvaluationError(f"columns: {len(columns)} target columns for a batch of {images.shape[0]} images")
    wrapped = TaskOutput(model, task)
    targets = resolve_target_layers(model, layer=layer, image_size=int(images.shape[-1]), min_side=min_side,
                                    stages=stages)
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with torch.enable_grad(), cam_type(model=wrapped, target_layers=targets) as cam:
            _check_columns(wrapped, images.to(device), columns)
            maps = cam(input_tensor=images.to(device), targets=[ClassifierOutputTarget(int(j)) for j in columns])
    finally:
        model.train(was_training)
    if maps.shape[0] != images.shape[0]:
        raise EvaluationError(f"grad-cam returned {maps.shape[0]} maps for {images.shape[0]} images")
    return np.nan_to_num(maps.astype(np.float32), nan=0.0)


def _check_columns(wrapped: TaskOutput, images: torch.Tensor, columns: Sequence[int]) -> None:
    """Run one cheap forward on the first image to check the columns exist before Grad-CAM's backward pass."""
    with torch.no_grad():
        width = int(wrapped(images[:1]).shape[1])
    bad = [j for j in columns if not 0 <= int(j) < width]
    if bad:
        raise EvaluationError(f"columns: {bad} out of range for task {wrapped.task!r} with {width} outputs")
