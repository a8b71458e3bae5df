"""The 14 phantom findings: each has its own signature and location (a registry, one small class per finding).

A finding may ``adjust`` the anatomy before the chest is drawn (cardiomegaly widens the heart, emphysema enlarges
and flattens the lungs, atelectasis lifts a hemidiaphragm) and ``draw`` onto the chest's attenuation afterwards,
returning the boxes (normalised x, y, w, h) that enclose what it planted. ``strength`` scales conspicuity: about
1 is a clear lesion, 0.3 a subtle one (see ``phantom.conspicuity``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import cv2
import numpy as np

from cxrmtl.labels import FINDINGS
from cxrmtl.phantom.anatomy import Chest, ChestParams, blur, grid, smooth_noise

Box = tuple[float, float, float, float]


def _mask_box(mask: np.ndarray, width: int) -> Box | None:
    """Normalised bounding box of the non-zero pixels of a uint8 mask (None when empty)."""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return None
    return x / width, y / width, w / width, h / width


def _lung_point(
    chest: Chest,
    rng: np.random.Generator,
    side: int,
    zone: tuple[float, float],
    lateral: tuple[float, float] = (0.0, 1.0),
) -> tuple[float, float]:
    """A point inside one lung at a relative height ``zone`` (0 apex .. 1 base) and lateral fraction (0 medial)."""
    lung = chest.lungs[side]
    x0, y0, bw, bh = cv2.boundingRect(lung)
    w = chest.width
    for _ in range(20):
        row = int(y0 + bh * rng.uniform(*zone))
        cols = np.flatnonzero(lung[min(row, w - 1)])
        if cols.size < 3:
            continue
        frac = rng.uniform(*lateral)
        ordered = cols if side > 0 else cols[::-1]  # medial first
        col = ordered[min(int(frac * cols.size), cols.size - 1)]
        return (col + 0.5) / w, (row + 0.5) / w
    return (x0 + bw / 2) / w, (y0 + bh / 2) / w


def _px(value: float, width: int) -> int:
    return max(1, round(value * width))


class Finding:
    """Base: no anatomy change, nothing drawn."""

    name: ClassVar[str] = ""

    def adjust(self, params: ChestParams, rng: np.random.Generator, strength: float) -> None:
        """Change the anatomy before the chest is drawn (default: nothing)."""

    def draw(self, chest: Chest, rng: np.random.Generator, strength: float) -> list[Box]:
        """Add the finding's density to ``chest``; return the boxes enclosing it."""
        return []


REGISTRY: dict[str, Finding] = {}


def register(cls: type[Finding]) -> type[Finding]:
    """Class decorator: add one instance of a finding to the registry under its canonical name."""
    REGISTRY[cls.name] = cls()
    return cls


def _add_in_lung(chest: Chest, layer: np.ndarray, side: int | None = None) -> None:
    lung = chest.lung_any() if side is None else chest.lungs[side]
    chest.density += layer * blur(lung.astype(np.float32) / 255.0, chest.width * 0.004)


@register
class Atelectasis(Finding):
    """Plate-like linear opacity in a lower zone plus volume loss (the hemidiaphragm rises)."""

    name = "Atelectasis"

    def adjust(self, params: ChestParams, rng: np.random.Generator, strength: float) -> None:
        side = int(rng.choice([-1, 1]))
        params.lift[side] = params.lift.get(side, 0.0) + 0.02 * min(strength, 1.5)

    def draw(self, chest: Chest, rng: np.random.Generator, strength: float) -> list[Box]:
        w = chest.width
        side = int(rng.choice([-1, 1]))
        cx, cy = _lung_point(chest, rng, side, (0.6, 0.8), (0.25, 0.7))
        layer = np.zeros((w, w), np.float32)
        axes = (_px(rng.uniform(0.06, 0.1), w), _px(rng.uniform(0.008, 0.016), w))
        cv2.ellipse(layer, (round(cx * w), round(cy * w)), axes, float(rng.uniform(-20, 20)), 0, 360, 1.0, -1)
        box = _mask_box((layer > 0).astype(np.uint8), w)
        _add_in_lung(chest, blur(layer, w * 0.004) * 0.38 * strength, side)
        return [box] if box else []


@register
class Cardiomegaly(Finding):
    """Cardiothoracic ratio above 0.5 (the box is the heart)."""

    name = "Cardiomegaly"

    def adjust(self, params: ChestParams, rng: np.random.Generator, strength: float) -> None:
        params.ctr = float(np.clip(0.5 + 0.06 * strength + rng.uniform(0.0, 0.04), 0.51, 0.7))

    def draw(self, chest: Chest, rng: np.random.Generator, strength: float) -> list[Box]:
        return [chest.heart_box]


@register
class Effusion(Finding):
    """Basal opacity with a meniscus rising laterally and a blunted costophrenic angle."""

    name = "Effusion"

    def draw(self, chest: Chest, rng: np.random.Generator, strength: float) -> list[Box]:
        w = chest.width
        x, y = grid(w)
        boxes = []
        sides = [-1, 1] if rng.random() < 0.3 else [int(rng.choice([-1, 1]))]
        for side in sides:
            lung = chest.lungs[side]
            x0, y0, bw, bh = cv2.boundingRect(lung)
            base = (y0 + bh) / w
            depth = rng.uniform(0.05, 0.1) * (0.6 + 0.4 * min(strength, 1.5))
            lateral = np.clip((x - (x0 + bw / 2) / w) * side / (bw / w / 2), 0, 1)
            level = base - depth - 0.05 * lateral**2  # meniscus: higher against the chest wall
            fluid = ((y > level) & (lung > 0)).astype(np.uint8)
            box = _mask_box(fluid, w)
            if box:
                boxes.append(box)
            grad = np.clip((y - level) / 0.03, 0, 1)
            chest.density += blur(fluid.astype(np.float32) * grad, w * 0.006) * 0.5 * strength
        return boxes


@register
class Infiltration(Finding):
    """Patchy, ill-defined opacities scattered over one zone."""

    name = "Infiltration"

    def draw(self, chest: Chest, rng: np.random.Generator, strength: float) -> list[Box]:
        w = chest.width
        side = int(rng.choice([-1, 1]))
        cx, cy = _lung_point(chest, rng, side, (0.3, 0.75), (0.2, 0.8))
        region = np.zeros((w, w), np.float32)
        cv2.ellipse(region, (round(cx * w), round(cy * w)), (_px(0.08, w), _px(0.1, w)), 0, 0, 360, 1.0, -1)
        patches = np.clip(smooth_noise(rng, w, max(12, w // 12)) * 2.0 - 0.2, 0, 1) * region
        patches *= chest.lungs[side] > 0
        box = _mask_box((patches > 0.15).astype(np.uint8), w)
        _add_in_lung(chest, blur(patches, w * 0.006) * 0.35 * strength, side)
        return [box] if box else []


class _Round(Finding):
    """Round opacities of a size range (nodules < 3 cm, masses larger, with lobulated margins)."""

    radius: ClassVar[tuple[float, float]] = (0.01, 0.02)
    count: ClassVar[tuple[int, int]] = (1, 1)
    amplitude: ClassVar[float] = 0.4
    lobes: ClassVar[int] = 1

    def draw(self, chest: Chest, rng: np.random.Generator, strength: float) -> list[Box]:
        w = chest.width
        boxes = []
        for _ in range(int(rng.integers(self.count[0], self.count[1] + 1))):
            side = int(rng.choice([-1, 1]))
            cx, cy = _lung_point(chest, rng, side, (0.15, 0.8), (0.2, 0.85))
            r = rng.uniform(*self.radius)
            layer = np.zeros((w, w), np.float32)
            for k in range(self.lobes):
                off = (rng.normal(0, r * 0.35), rng.normal(0, r * 0.35)) if k else (0.0, 0.0)
                cv2.circle(
                    layer,
                    (round((cx + off[0]) * w), round((cy + off[1]) * w)),
                    _px(r * (1 - 0.15 * k), w),
                    1.0,
                    -1,
                    cv2.LINE_AA,
                )
            box = _mask_box((layer > 0.5).astype(np.uint8), w)
            if box:
                boxes.append(box)
            # Denser at the centre (a sphere's chord length), softened edge.
            chest.density += blur(layer, max(0.6, w * r * 0.15)) * self.amplitude * strength
        return boxes


@register
class Mass(_Round):
    name = "Mass"
    radius = (0.035, 0.06)
    amplitude = 0.55
    lobes = 3


@register
class Nodule(_Round):
    name = "Nodule"
    radius = (0.013, 0.024)
    count = (1, 3)
    amplitude = 0.6


@register
class Pneumonia(Finding):
    """Fluffy airspace opacity with ill-defined margins, lower or middle zone."""

    name = "Pneumonia"

    def draw(self, chest: Chest, rng: np.random.Generator, strength: float) -> list[Box]:
        w = chest.width
        side = int(rng.choice([-1, 1]))
        cx, cy = _lung_point(chest, rng, side, (0.45, 0.8), (0.3, 0.8))
        layer = np.zeros((w, w), np.float32)
        for _ in range(5):
            px, py = cx + rng.normal(0, 0.03), cy + rng.normal(0, 0.025)
            cv2.circle(layer, (round(px * w), round(py * w)), _px(rng.uniform(0.03, 0.05), w), 1.0, -1)
        layer *= chest.lungs[side] > 0
        box = _mask_box((layer > 0).astype(np.uint8), w)
        _add_in_lung(chest, blur(layer, w * 0.018) * 0.42 * strength, side)
        return [box] if box else []


@register
class Pneumothorax(Finding):
    """Apical-lateral air rim: a thin visceral pleural line with no lung markings beyond it."""

    name = "Pneumothorax"

    def draw(self, chest: Chest, rng: np.random.Generator, strength: float) -> list[Box]:
        w = chest.width
        side = int(rng.choice([-1, 1]))
        lung = chest.lungs[side]
        dist = cv2.distanceTransform(lung, cv2.DIST_L2, 3) / w
        _, y = grid(w)
        x0, y0, bw, bh = cv2.boundingRect(lung)
        rim = rng.uniform(0.025, 0.06) * (0.6 + 0.4 * min(strength, 1.5))
        lower = (y0 + bh * rng.uniform(0.45, 0.7)) / w
        x, _ = grid(w)
        lateral = (x - (x0 + bw / 2) / w) * side > -0.03  # apex and lateral wall, not the mediastinal side
        region = (lung > 0) & (dist < rim) & (y < lower) & lateral
        line = (np.abs(dist - rim) < 1.2 / w) & (y < lower) & lateral & (lung > 0)
        free = blur(region.astype(np.float32), w * 0.002)
        chest.vessels *= 1.0 - free * min(1.0, 0.6 + 0.4 * strength)
        chest.density -= free * 0.12 * strength
        chest.density += blur(line.astype(np.float32), w * 0.0015) * 0.3 * strength
        box = _mask_box(region.astype(np.uint8), w)
        return [box] if box else []


@register
class Consolidation(Finding):
    """Dense homogeneous lobar opacity, sharply bounded by a fissure, with air bronchograms."""

    name = "Consolidation"

    def draw(self, chest: Chest, rng: np.random.Generator, strength: float) -> list[Box]:
        w = chest.width
        x, y = grid(w)
        side = int(rng.choice([-1, 1]))
        lung = chest.lungs[side]
        x0, y0, bw, bh = cv2.boundingRect(lung)
        fissure = (y0 + bh * rng.uniform(0.4, 0.6)) / w
        slope = rng.uniform(-0.15, 0.15)
        cx = (x0 + bw * rng.uniform(0.35, 0.65)) / w
        below = y > fissure + slope * (x - cx)
        lobe = ((x - cx) / 0.1) ** 2 + ((y - fissure - 0.02) / 0.15) ** 2 < 1.0  # bounded by the fissure above
        region = (below & lobe & (lung > 0)).astype(np.float32)
        bronchi = np.zeros((w, w), np.float32)
        for _ in range(3):
            a = rng.uniform(0.3, 1.2) * (1 if side > 0 else -1) + math.pi / 2 * (1 if side < 0 else 0)
            px, py = cx + rng.normal(0, 0.02), fissure + 0.02
            cv2.line(
                bronchi,
                (round(px * w), round(py * w)),
                (round((px + 0.1 * math.cos(a)) * w), round((py + 0.1 * abs(math.sin(a))) * w)),
                1.0,
                1,
                cv2.LINE_AA,
            )
        layer = blur(region, w * 0.003) * (1.0 - 0.5 * blur(bronchi, w * 0.002) * region)
        box = _mask_box(region.astype(np.uint8), w)
        chest.density += layer * 0.45 * strength
        return [box] if box else []


@register
class Edema(Finding):
    """Bilateral perihilar ("bat-wing") haze, thick vessels and Kerley B lines at the bases."""

    name = "Edema"

    def draw(self, chest: Chest, rng: np.random.Generator, strength: float) -> list[Box]:
        w = chest.width
        x, y = grid(w)
        haze = np.zeros((w, w), np.float32)
        for side, (hx, hy) in chest.hila.items():
            hx2 = hx + side * 0.04
            haze += np.exp(-(((x - hx2) / 0.11) ** 2 + ((y - hy) / 0.13) ** 2)).astype(np.float32)
        kerley = np.zeros((w, w), np.float32)
        for side in (-1, 1):
            for _ in range(5):
                px, py = _lung_point(chest, rng, side, (0.7, 0.92), (0.85, 1.0))
                cv2.line(
                    kerley, (round(px * w), round(py * w)), (round((px - side * 0.025) * w), round(py * w)), 1.0, 1
                )
        chest.vessels *= 1.0 + 0.5 * strength
        _add_in_lung(chest, (haze * 0.3 + blur(kerley, w * 0.002) * 0.25) * strength)
        return []


@register
class Emphysema(Finding):
    """Hyperlucent, enlarged lungs with flat, low diaphragms and sparse markings."""

    name = "Emphysema"

    def adjust(self, params: ChestParams, rng: np.random.Generator, strength: float) -> None:
        s = min(strength, 1.5)
        params.dome_right += 0.05 * s
        params.dome_left += 0.05 * s
        params.dome_drop *= max(0.15, 1 - 0.6 * s)
        params.lung_half += 0.01 * s
        params.lucency *= 1 + 0.16 * s
        params.markings *= max(0.3, 1 - 0.4 * s)
        params.ctr = min(params.ctr, 0.42)  # long, narrow heart


@register
class Fibrosis(Finding):
    """Coarse reticular network in the upper, peripheral lung with volume loss (hila pulled up)."""

    name = "Fibrosis"

    def adjust(self, params: ChestParams, rng: np.random.Generator, strength: float) -> None:
        params.lung_top += 0.012 * min(strength, 1.5)

    def draw(self, chest: Chest, rng: np.random.Generator, strength: float) -> list[Box]:
        w = chest.width
        _, y = grid(w)
        noise = smooth_noise(rng, w, max(12, w // 10))
        net = np.clip(1.0 - np.abs(noise) / 0.1, 0, 1)  # zero crossings of smooth noise form a mesh
        top = min(cv2.boundingRect(chest.lungs[s])[1] for s in (-1, 1)) / w
        zone = np.clip(1.0 - (y - top) / 0.4, 0, 1).astype(np.float32)
        chest.hila = {s: (hx, hy - 0.02) for s, (hx, hy) in chest.hila.items()}
        _add_in_lung(chest, blur(net, w * 0.002) * zone * 0.5 * strength)
        return []


@register
class PleuralThickening(Finding):
    """Smooth pleural band along the lateral chest wall or an apical cap."""

    name = "Pleural_Thickening"

    def draw(self, chest: Chest, rng: np.random.Generator, strength: float) -> list[Box]:
        w = chest.width
        side = int(rng.choice([-1, 1]))
        lung = chest.lungs[side]
        dist = cv2.distanceTransform(lung, cv2.DIST_L2, 3) / w
        x, y = grid(w)
        x0, y0, bw, bh = cv2.boundingRect(lung)
        start = (y0 + bh * rng.uniform(0.0, 0.4)) / w
        band = (lung > 0) & (dist < rng.uniform(0.015, 0.03)) & (y > start) & (y < start + 0.25)
        band &= (x - (x0 + bw / 2) / w) * side > 0
        chest.density += blur(band.astype(np.float32), w * 0.003) * 0.6 * strength
        return []


@register
class Hernia(Finding):
    """Hiatal hernia: a round retrocardiac opacity containing a gas bubble with an air-fluid level."""

    name = "Hernia"

    def draw(self, chest: Chest, rng: np.random.Generator, strength: float) -> list[Box]:
        w = chest.width
        _, hy, _, hh = chest.heart_box
        cx, cy = chest.params.mid_x + rng.uniform(0.0, 0.04), hy + hh * rng.uniform(0.45, 0.65)
        r = rng.uniform(0.045, 0.07)
        sac = np.zeros((w, w), np.float32)
        cv2.circle(sac, (round(cx * w), round(cy * w)), _px(r, w), 1.0, -1, cv2.LINE_AA)
        gas = np.zeros((w, w), np.float32)
        cv2.ellipse(
            gas, (round(cx * w), round((cy - r * 0.15) * w)), (_px(r * 0.7, w), _px(r * 0.45, w)), 0, 180, 360, 1.0, -1
        )
        chest.density += (blur(sac, w * 0.004) * 0.4 - blur(gas, w * 0.002) * 1.0) * strength
        return []


if set(REGISTRY) != set(FINDINGS):  # a finding without a renderer would silently produce unlearnable labels
    raise RuntimeError(
        f"phantom finding registry does not match labels.FINDINGS: {sorted(set(FINDINGS) ^ set(REGISTRY))}"
    )
