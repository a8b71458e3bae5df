"""Batched image augmentation and normalisation on the device (one affine_grid/grid_sample call per batch).

Why batched on the device: per-image CPU transforms in worker processes are the usual bottleneck of X-ray training
at 224-512 px; here the loader hands over uint8 tensors and all geometry is one ``grid_sample`` per batch on the
GPU (or CPU). Random parameters are drawn from an explicit CPU ``torch.Generator`` so that a run resumed mid-epoch
draws exactly the same augmentation as an uninterrupted one, on any device.

Geometry per sample: random resized crop (area fraction ``scale``, aspect ``ratio``), rotation by up to
``rotate_deg``, translation up to ``translate`` of the side, optional horizontal flip; photometric: contrast
(multiplicative) and brightness (additive) on the [0, 1] intensity, clipped. No vertical flip.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cxrmtl.config import AugmentConfig
from cxrmtl.data.loader import normalize


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def affine_params(batch: int, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """(B, 2, 3) float64 matrices mapping output to input coordinates in affine_grid's [-1, 1] convention."""
    area = _uniform(batch, cfg.scale[0], cfg.scale[1], generator)
    log_ratio = _uniform(batch, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), generator)
    ratio = torch.exp(log_ratio)
    half_w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop half-widths in units of the half side
    half_h = torch.sqrt(area / ratio).clamp(max=1.0)
    # The crop centre may move as far as the crop still fits, plus the extra translation.
    cx = _uniform(batch, -1.0, 1.0, generator) * (1.0 - half_w) + _uniform(batch, -1, 1, generator) * 2 * cfg.translate
    cy = _uniform(batch, -1.0, 1.0, generator) * (1.0 - half_h) + _uniform(batch, -1, 1, generator) * 2 * cfg.translate
    angle = torch.deg2rad(_uniform(batch, -cfg.rotate_deg, cfg.rotate_deg, generator))
    flip = torch.where(torch.rand(batch, generator=generator, dtype=torch.float64) < cfg.hflip, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.empty(batch, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = cos * half_w * flip
    theta[:, 0, 1] = -sin * half_h
    theta[:, 1, 0] = sin * half_w * flip
    theta[:, 1, 1] = cos * half_h
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    return theta


def photometric_params(batch: int, cfg: AugmentConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per-sample (contrast factor, brightness offset), each (B,) float64."""
    contrast = _uniform(batch, 1.0 - cfg.contrast, 1.0 + cfg.contrast, generator)
    brightness = _uniform(batch, -cfg.brightness, cfg.brightness, generator)
    return contrast, brightness


class BatchAugment:
    """Callable turning a uint8 batch into a normalised float batch, augmenting it when asked."""

    def __init__(self, cfg: AugmentConfig, *, mean: float, std: float) -> None:
        self.cfg = cfg
        self.mean = mean
        self.std = std

    def __call__(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Augment (when enabled and a generator is given) and normalise ``images`` (B, 1, H, W) uint8."""
        if not self.cfg.enabled or generator is None:
            return normalize(images, mean=self.mean, std=self.std)
        x = images.float() / 255.0
        batch = x.shape[0]
        theta = affine_params(batch, self.cfg, generator).to(device=x.device, dtype=x.dtype)
        contrast, brightness = photometric_params(batch, self.cfg, generator)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        contrast = contrast.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
        brightness = brightness.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
        x = ((x - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)
        return (x - self.mean) / self.std


def step_generator(*, seed: int, step: int, rank: int) -> torch.Generator:
    """A CPU generator determined by (seed, global step, rank) only, so resumed runs redraw identical values."""
    # Large odd multipliers keep the three inputs from colliding (splitmix-style mixing).
    mixed = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + rank * 0x94D049BB133111EB) % (2**63 - 1)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(mixed)
    return gen
