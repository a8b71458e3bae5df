"""Procedural chest anatomy for the phantom: body, lungs, mediastinum and heart, diaphragm, bones, markings.

The image is built as a map of X-ray *attenuation* (additive: a lesion adds density, air removes it) at a working
resolution with vectorised numpy/OpenCV operations, then tone-mapped like a detector: pixel = 1 - exp(-gain * D).
Geometry is in normalised units (0..1 of the image width) so every size renders the same chest.

Proportions follow textbook PA anatomy: lung apices at ~13 % of the height, right hemidiaphragm about 2 % higher
than the left, normal cardiothoracic ratio (CTR) 0.39-0.49 and > 0.5 meaning cardiomegaly (Danzer 1919), an AP
film magnifying the heart by ~15 % (divergent beam, heart far from the detector), breast shadows over the lower
zones in women and bone mineral density falling with age.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from cxrmtl.labels import SEX_CODES, VIEW_CODES


@dataclass
class ChestParams:
    """Anatomical parameters of one study (patient traits plus per-study jitter); findings may adjust them."""

    sex: int
    age: float
    view: int
    body_half: float  # half-width of the trunk at the lung bases
    lung_top: float  # apex height
    dome_right: float  # height of the right hemidiaphragm dome (image left)
    dome_left: float
    dome_drop: float  # how far the costophrenic angles lie below the domes (0 = flat diaphragm)
    lung_half: float  # lateral extent of each lung from the midline
    ctr: float  # cardiothoracic ratio as drawn (before AP magnification)
    heart_height: float
    mid_x: float  # midline (patient rotation shifts it)
    tilt: float  # degrees of in-plane rotation
    bone: float  # bone density factor (age)
    lucency: float  # how much air the lungs hold (emphysema raises it)
    markings: float  # vascular marking amplitude
    gain: float  # exposure
    noise: float  # quantum noise level
    lift: dict[int, float] = field(default_factory=dict)  # per-side (-1 right, +1 left) diaphragm elevation


def sample_params(
    *, sex: int, age: float, view: int, patient_rng: np.random.Generator, rng: np.random.Generator
) -> ChestParams:
    """Patient-constant traits from ``patient_rng`` (same chest across follow-ups), study jitter from ``rng``."""
    male = sex == SEX_CODES["M"]
    ap = view == VIEW_CODES["AP"]
    body = patient_rng.normal(0.44 if male else 0.41, 0.015)
    ctr = float(np.clip(patient_rng.normal(0.44, 0.025), 0.38, 0.49))
    dome = patient_rng.normal(0.635, 0.015) - (0.03 if ap else 0.0)  # supine AP films are taken in worse inspiration
    bone = float(np.clip(1.15 - 0.0075 * max(age - 30.0, 0.0), 0.45, 1.15))  # mineral density falls with age
    return ChestParams(
        sex=sex,
        age=age,
        view=view,
        body_half=float(body),
        lung_top=float(patient_rng.normal(0.135, 0.01) + rng.normal(0, 0.005)),
        dome_right=float(dome + rng.normal(0, 0.008)),
        dome_left=float(dome + 0.022 + rng.normal(0, 0.008)),
        dome_drop=float(patient_rng.normal(0.075, 0.01)),
        lung_half=float(body - 0.065 + patient_rng.normal(0, 0.008)),
        ctr=ctr,
        heart_height=float(patient_rng.normal(0.115, 0.008)),
        mid_x=float(0.5 + rng.normal(0, 0.012)),
        tilt=float(rng.normal(0, 1.5)),
        bone=bone,
        lucency=float(patient_rng.normal(1.0, 0.05)),
        markings=float(patient_rng.normal(1.0, 0.12)),
        gain=float(rng.normal(1.25 if ap else 1.4, 0.08)),
        noise=float(rng.uniform(0.02, 0.035) if ap else rng.uniform(0.01, 0.02)),
    )


@lru_cache(maxsize=8)
def grid(width: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates (x, y) of a square image, cached per size."""
    axis = (np.arange(width, dtype=np.float32) + 0.5) / width
    return np.broadcast_to(axis[None, :], (width, width)), np.broadcast_to(axis[:, None], (width, width))


def blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur with a sigma in pixels (no-op for tiny sigmas)."""
    if sigma_px < 0.3:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma_px), borderType=cv2.BORDER_REFLECT)


def smooth_noise(rng: np.random.Generator, width: int, cells: int) -> np.ndarray:
    """Band-limited noise in about [-1, 1]: a coarse random grid upsampled with cubic interpolation."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (width, width), interpolation=cv2.INTER_CUBIC) * 0.6


def pts(points: np.ndarray, width: int) -> np.ndarray:
    """Normalised (x, y) points -> int32 pixel polygon for OpenCV."""
    return np.round(np.asarray(points) * width).astype(np.int32).reshape(-1, 1, 2)


@dataclass
class Chest:
    """A rendered chest before findings: attenuation layers plus the geometry findings need."""

    width: int
    params: ChestParams
    density: np.ndarray  # float32 attenuation, findings add to it
    vessels: np.ndarray  # float32 marking layer (kept apart so a pneumothorax can erase it)
    lungs: dict[int, np.ndarray]  # side -> uint8 mask (side -1: patient right = image left)
    heart_box: tuple[float, float, float, float]  # x, y, w, h normalised
    hila: dict[int, tuple[float, float]]
    thorax: tuple[float, float]  # inner rib cage left/right x at the widest level
    extra_boxes: list = field(default_factory=list)

    def lung_any(self) -> np.ndarray:
        return np.maximum(self.lungs[-1], self.lungs[1])


def dome_y(params: ChestParams, side: int, x: np.ndarray) -> np.ndarray:
    """Height of the diaphragm under normalised x on one side: a parabola peaking mid-hemithorax."""
    peak_x = params.mid_x + side * params.lung_half * 0.5
    top = (params.dome_right if side < 0 else params.dome_left) - params.lift.get(side, 0.0)
    rel = (x - peak_x) / (params.lung_half * 0.5)
    return top + params.dome_drop * np.clip(rel, -1.2, 1.2) ** 2


def lung_polygon(params: ChestParams, side: int, n: int = 28) -> np.ndarray:
    """Outline of one lung: rounded apex, convex lateral wall down to the costophrenic angle, dome, medial border."""
    mx, half = params.mid_x, params.lung_half
    lat_x = mx + side * half
    cp_y = float(dome_y(params, side, np.array([lat_x]))[0])
    t = np.linspace(0, 1, n)
    # Lateral wall: from the apex (near the midline) bulging out to the costophrenic angle.
    wall_x = mx + side * (0.11 + (half - 0.11) * np.sin(t * math.pi / 2) ** 0.45)
    wall_y = params.lung_top + (cp_y - params.lung_top) * t
    dome_x = np.linspace(lat_x, mx + side * 0.045, n)
    medial_top = params.lung_top + 0.06
    xs = np.concatenate([wall_x, dome_x, [mx + side * 0.05, mx + side * 0.06, mx + side * 0.085]])
    ys = np.concatenate(
        [wall_y, dome_y(params, side, dome_x), [medial_top + 0.15, medial_top + 0.02, params.lung_top + 0.005]]
    )
    return np.stack([xs, ys], axis=1)


def heart_geometry(params: ChestParams) -> tuple[tuple[float, float], tuple[float, float], float]:
    """Heart ellipse centre, semi-axes and angle; CTR sets its width relative to the inner thorax."""
    thorax_w = 2 * params.lung_half
    magnify = 1.15 if params.view == VIEW_CODES["AP"] else 1.0
    heart_w = params.ctr * thorax_w * magnify
    base = min(params.dome_right, params.dome_left) - params.lift.get(1, 0.0) * 0.5
    centre = (params.mid_x + heart_w * 0.17, base - params.heart_height * 0.3)  # 2/3 of the heart lies left
    return centre, (heart_w / 2, params.heart_height * magnify), -18.0


def _body(params: ChestParams, w: int) -> np.ndarray:
    mx, half = params.mid_x, params.body_half
    outline = np.array(
        [
            [mx - 0.07, 0.0], [mx - 0.09, 0.06], [mx - half + 0.02, 0.09], [0.0, 0.12], [0.0, 0.62],
            [mx - half - 0.03, 0.58], [mx - half, 0.75], [mx - half + 0.02, 1.0], [mx + half - 0.02, 1.0],
            [mx + half, 0.75], [mx + half + 0.03, 0.58], [1.0, 0.62], [1.0, 0.12], [mx + half - 0.02, 0.09],
            [mx + 0.09, 0.06], [mx + 0.07, 0.0],
        ]
    )  # fmt: skip
    mask = np.zeros((w, w), np.float32)
    cv2.fillPoly(mask, [pts(outline, w)], 1.0)
    mask = blur(mask, w * 0.012)
    x, _ = grid(w)
    thickness = 0.35 + 0.65 * np.sqrt(np.clip(1 - ((x - mx) / (half + 0.03)) ** 2, 0, 1))
    return mask * thickness


def _lungs(params: ChestParams, w: int) -> dict[int, np.ndarray]:
    lungs = {}
    for side in (-1, 1):
        mask = np.zeros((w, w), np.uint8)
        cv2.fillPoly(mask, [pts(lung_polygon(params, side), w)], 255)
        lungs[side] = mask
    return lungs


def _heart(params: ChestParams, w: int, lungs: dict[int, np.ndarray]) -> tuple[np.ndarray, tuple]:
    (cx, cy), (ax, ay), angle = heart_geometry(params)
    mask = np.zeros((w, w), np.uint8)
    cv2.ellipse(mask, (round(cx * w), round(cy * w)), (round(ax * w), round(ay * w)), angle, 0, 360, 255, -1)
    for side in lungs:
        lungs[side] = cv2.bitwise_and(lungs[side], cv2.bitwise_not(mask))
    x0, y0, bw, bh = cv2.boundingRect(mask)
    return mask, (x0 / w, y0 / w, bw / w, bh / w)


def _abdomen(params: ChestParams, w: int) -> np.ndarray:
    xs = np.linspace(0, 1, 48)
    ys = np.where(xs < params.mid_x, dome_y(params, -1, xs), dome_y(params, 1, xs)) + 0.012
    poly = np.concatenate([np.stack([xs, ys], 1), [[1, 1], [0, 1]]])
    mask = np.zeros((w, w), np.float32)
    cv2.fillPoly(mask, [pts(poly, w)], 1.0)
    return mask


def _mediastinum(params: ChestParams, w: int) -> np.ndarray:
    x, y = grid(w)
    mx = params.mid_x
    width = 0.07 + 0.03 * np.clip((y[:, :1] - 0.1) / 0.4, 0, 1)
    t2 = ((x - mx) / width) ** 2
    med = np.exp(-(t2 * t2))
    knob = np.zeros((w, w), np.float32)  # aortic knob on the patient's left
    cv2.circle(knob, (round((mx + 0.055) * w), round((params.lung_top + 0.14) * w)), round(0.032 * w), 1.0, -1)
    trachea = np.exp(-(((x[0] - mx) / 0.014) ** 2))[None, :] * ((y[:, :1] < params.lung_top + 0.18) & (y[:, :1] > 0.03))
    return med * 0.3 + blur(knob, w * 0.006) * 0.25 - trachea * 0.15


def _ribs(params: ChestParams, w: int, rng: np.random.Generator) -> np.ndarray:
    """Posterior ribs (clear, curving down laterally) and fainter anterior ribs, drawn as cortex-lined tubes."""
    bones = np.zeros((w, w), np.float32)
    mx = params.mid_x
    base = params.lung_top - 0.035
    step = (max(params.dome_right, params.dome_left) - base) / 9.2
    thick = max(1, round(w * 0.017))
    t = np.linspace(0, 1, 12)[None, :]
    rib = np.arange(11)[:, None]
    span = params.lung_half + 0.03
    y0 = base + rib * step + rng.normal(0, 0.003, (11, 1))
    posterior, anterior = [], []
    for side in (-1, 1):
        xs = mx + side * (0.035 + span * t) + 0 * rib
        ys = y0 - 0.035 * np.sin(t * math.pi * 0.8) + (0.13 + 0.005 * rib) * t**2
        posterior += list(np.round(np.stack([xs, ys], -1) * w).astype(np.int32))
        # Anterior rib: from the lateral wall sloping down towards the sternum, fainter (cartilage is invisible).
        ta = t[:, :8] * 1.6
        ax = mx + side * (span - 0.25 * span * ta) + 0 * rib
        ay = y0 + 0.06 + 0.10 * ta
        anterior += list(np.round(np.stack([ax, ay], -1) * w).astype(np.int32))
    # LINE_8 rather than anti-aliased lines: the bone layer is blurred afterwards anyway, and it is 3x faster.
    cv2.polylines(bones, posterior, False, 1.0, thick, cv2.LINE_8)
    cv2.polylines(bones, posterior, False, 0.55, max(1, thick - 2), cv2.LINE_8)
    cv2.polylines(bones, anterior, False, 0.35, max(1, thick - 1), cv2.LINE_8)
    return bones


def _clavicles_spine(params: ChestParams, w: int) -> np.ndarray:
    bones = np.zeros((w, w), np.float32)
    mx = params.mid_x
    ap = params.view == VIEW_CODES["AP"]
    lift = 0.035 if ap else 0.0  # lordotic AP projection throws the clavicles up
    thick = max(1, round(w * 0.022))
    t = np.linspace(0, 1, 12)
    for side in (-1, 1):
        xs = mx + side * (0.035 + 0.33 * t)
        ys = params.lung_top + 0.045 - lift - 0.06 * t + 0.02 * np.sin(t * math.pi * 2)
        poly = pts(np.stack([xs, ys], 1), w)
        cv2.polylines(bones, [poly], False, 1.0, thick, cv2.LINE_AA)
        cv2.polylines(bones, [poly], False, 0.6, max(1, thick - 2), cv2.LINE_AA)
        # Humeral head and glenoid at the shoulder.
        cv2.circle(bones, (round((mx + side * 0.44) * w), round(0.2 * w)), round(0.055 * w), 0.7, -1, cv2.LINE_AA)
        if ap:  # scapulae project over the upper lung fields on AP films
            tri = np.array([[mx + side * 0.40, 0.17], [mx + side * 0.30, 0.26], [mx + side * 0.38, 0.46]])
            cv2.fillPoly(bones, [pts(tri, w)], 0.3, cv2.LINE_AA)
    # Spine (vertebral bodies, disc spaces, pedicles): a cached template drawn on the midline, shifted to mid_x.
    bones += np.roll(_spine(w), round((mx - 0.5) * w), axis=1)
    return bones


@lru_cache(maxsize=8)
def _spine(w: int) -> np.ndarray:
    """Vertebral bodies with disc spaces and pedicles on the image midline, seen through the mediastinum."""
    spine = np.zeros((w, w), np.float32)
    for k in range(17):
        y0 = 0.02 + k * 0.058
        cv2.rectangle(spine, (round(0.472 * w), round(y0 * w)), (round(0.528 * w), round((y0 + 0.046) * w)), 0.3, -1)
        for side in (-1, 1):
            centre = (round((0.5 + side * 0.022) * w), round((y0 + 0.02) * w))
            cv2.circle(spine, centre, max(1, round(0.008 * w)), 0.5, -1)
    spine.setflags(write=False)  # shared by every image of this size
    return spine


def _breasts(params: ChestParams, w: int) -> np.ndarray:
    """Female breast shadows: soft density over the lower zones, fading upwards, with a curved lower edge."""
    out = np.zeros((w, w), np.float32)
    size = 0.13 + 0.02 * np.clip((params.age - 20) / 40, 0, 1)
    for side in (-1, 1):
        centre = (round((params.mid_x + side * 0.24) * w), round((params.dome_right - 0.1) * w))
        for k, value in enumerate((0.35, 0.35, 0.3)):  # nested ellipses: thicker tissue towards the centre
            axes = (round(size * 1.2 * w * (1 - 0.25 * k)), round(size * w * (1 - 0.25 * k)))
            cv2.ellipse(out, centre, axes, 0, -20 if side < 0 else 20, 200 if side < 0 else 160, value, -1, cv2.LINE_AA)
    return blur(out, w * 0.012)


def _vessels(params: ChestParams, w: int, hila: dict, rng: np.random.Generator) -> np.ndarray:
    """Branching vessels from both hila (each segment splits in two, shorter and thinner) plus fine texture.

    Vectorised per generation: one polylines call draws all segments of a generation.
    """
    layer = np.zeros((w, w), np.float32)
    bases = np.array([-1.2, -0.55, 0.0, 0.5, 1.0])  # up, up-out, out, down-out, down
    sides = np.repeat([-1.0, 1.0], bases.size)
    angle = np.arctan2(np.sin(np.tile(bases, 2)), sides * np.cos(np.tile(bases, 2))) + rng.normal(0, 0.12, sides.size)
    x = np.array([hila[int(s)][0] for s in sides])
    y = np.array([hila[int(s)][1] for s in sides])
    length = 0.07 + rng.uniform(0, 0.02, sides.size)
    thick = 1.0
    for _ in range(5 if w >= 384 else 4):  # the finest generation is sub-pixel below ~384 px
        x2, y2 = x + length * np.cos(angle), y + length * np.sin(angle)
        segs = np.round(np.stack([np.stack([x, y], 1), np.stack([x2, y2], 1)], 1) * w).astype(np.int32)
        cv2.polylines(layer, list(segs), False, thick, max(1, round(thick * w * 0.006)), cv2.LINE_8)
        n = x.size * 2
        turn = np.tile([-1.0, 1.0], x.size) * rng.uniform(0.25, 0.55, n)
        x, y, angle = np.repeat(x2, 2), np.repeat(y2, 2), np.repeat(angle, 2) + turn
        length = np.repeat(length, 2) * rng.uniform(0.62, 0.8, n)
        thick *= 0.72
    texture = smooth_noise(rng, w, max(8, w // 8))
    return blur(layer, w * 0.003) * 0.9 + np.abs(texture) * 0.25


def render_chest(params: ChestParams, *, width: int, rng: np.random.Generator) -> Chest:
    """Build the normal chest's attenuation layers at ``width`` pixels."""
    w = width
    lungs = _lungs(params, w)
    heart_mask, heart_box = _heart(params, w, lungs)
    hila = {side: (params.mid_x + side * 0.085, params.lung_top + 0.26) for side in (-1, 1)}
    body = _body(params, w)
    density = body * 0.95
    density += _mediastinum(params, w)
    soft = heart_mask.astype(np.float32) * (0.06 / 255.0) + _abdomen(params, w) * 0.45 * np.minimum(body * 1.5, 1.0)
    density += blur(soft, w * 0.004)
    if params.sex == SEX_CODES["F"]:
        density += _breasts(params, w) * 0.22
    bones = _ribs(params, w, rng) * 0.15 + _clavicles_spine(params, w) * 0.3
    density += blur(bones, w * 0.0015) * params.bone
    vessels = _vessels(params, w, hila, rng) * 0.2 * params.markings
    return Chest(
        width=w,
        params=params,
        density=density,
        vessels=vessels,
        lungs=lungs,
        heart_box=heart_box,
        hila=hila,
        thorax=(params.mid_x - params.lung_half, params.mid_x + params.lung_half),
    )


def finish(chest: Chest, *, rng: np.random.Generator, noise_tile: np.ndarray, size: int) -> np.ndarray:
    """Subtract the lung air, add markings, tone-map, rotate, resize to ``size``, add noise -> uint8 image."""
    w, p = chest.width, chest.params
    lung = blur(chest.lung_any().astype(np.float32) / 255.0, w * 0.005)
    _, y = grid(w)
    # Air column is deepest mid-lung, thinner at apices and over the domes.
    depth = 0.62 * p.lucency * (0.75 + 0.25 * np.sin(np.clip((y - p.lung_top) / 0.55, 0, 1) * math.pi))
    density = chest.density - lung * depth + chest.vessels * lung
    if abs(p.tilt) > 0.05:
        rot = cv2.getRotationMatrix2D((w / 2, w / 2), p.tilt, 1.0)
        density = cv2.warpAffine(density, rot, (w, w), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    image = 1.0 - np.exp(-p.gain * np.clip(density, 0, None))
    image = blur(image, w * 0.0012)
    if size != w:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    oy, ox = rng.integers(0, noise_tile.shape[0] - size + 1, size=2)
    image = image + noise_tile[oy : oy + size, ox : ox + size] * (p.noise * 1.0)
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


@lru_cache(maxsize=4)
def noise_tile(size: int) -> np.ndarray:
    """A fixed, slightly correlated noise field larger than the image; images take random windows of it."""
    rng = np.random.default_rng(20_171_220)
    tile = rng.standard_normal((size * 2, size * 2)).astype(np.float32)
    return blur(tile, max(0.5, size / 1024)) * 1.6
