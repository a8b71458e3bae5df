"""Weakly supervised localisation scored the way Wang et al. 2017 (ChestX-ray8, arXiv:1705.02315) scored it.

A class heatmap (``localize/cam.py``) becomes boxes by a rule of ``BOX_RULES``: Wang's own ("wang": normalise it to
[0, 255], binarise it at each of ``labels.LOC_HEATMAP_THRESHOLDS``, 60 and 180, and put a box around every
8-connected region of each binary map) or the default "peak" (only the strongest regions; ``peak_boxes``). The
scoring is Wang's whatever the rule: a predicted box is correct when its overlap with a ground-truth box of the same
finding on the same image is strictly above T, the overlap being IoBB (intersection over the predicted box's area,
Wang's measure) or IoU. Accuracy is the fraction of (image, finding) cases with at least one correct box; the average
false positives per image (AFP) counts predicted boxes that match no ground-truth box. Next to Wang's protocol (kept
unchanged so the numbers stay comparable), the pointing game (Zhang et al., "Top-down neural attention by excitation
backprop", ECCV 2016) asks the question a reader of a heatmap asks: is the map's maximum inside a true box? This
module is plain numpy (OpenCV for the labelling and the smoothing): the heatmaps may come from any source, which is
what lets the tests check exact accuracies on synthetic maps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrmtl import labels
from cxrmtl.errors import EvaluationError


def _check_boxes(boxes: np.ndarray, *, field: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise EvaluationError(f"{field}: boxes must have shape (K, 4) as x, y, w, h; got {arr.shape}")
    if not np.isfinite(arr).all():
        raise EvaluationError(f"{field}: boxes contain NaN or infinite coordinates")
    if (arr[:, 2:] <= 0).any():
        raise EvaluationError(f"{field}: boxes must have positive width and height")
    return arr


def normalise_heatmap(heatmap: np.ndarray) -> np.ndarray | None:
    """Min-max scale a 2-D heatmap to [0, 255] (float); None when the map is constant and so shows nothing."""
    arr = np.asarray(heatmap, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise EvaluationError(f"heatmap: expected a non-empty 2-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise EvaluationError("heatmap: contains NaN or infinite values")
    low, high = float(arr.min()), float(arr.max())
    if high - low <= 0.0:
        return None
    return (arr - low) * (255.0 / (high - low))


def heatmap_to_boxes(
    heatmap: np.ndarray, *, thresholds: Sequence[float] = labels.LOC_HEATMAP_THRESHOLDS
) -> np.ndarray:
    """Wang et al.'s rule: boxes (K, 4) as x, y, w, h in heatmap pixels around the regions where the [0, 255] map
    is >= a threshold.

    Each threshold gives its own set of regions (Wang et al. used 60 and 180); boxes repeated exactly by two
    thresholds are kept once so that the false-positive count does not double a region that is simply sharp.
    """
    if not thresholds:
        raise EvaluationError("thresholds: give at least one heatmap threshold in [0, 255]")
    if any(not 0 <= t <= 255 for t in thresholds):
        raise EvaluationError(f"thresholds: heatmap thresholds must lie in [0, 255], got {list(thresholds)}")
    norm = normalise_heatmap(heatmap)
    if norm is None:
        return np.zeros((0, 4), dtype=np.float64)
    import cv2

    found: list[tuple[float, float, float, float]] = []
    for threshold in thresholds:
        # OpenCV's labelling: same regions and boxes as scipy.ndimage.label + find_objects, about 2x faster
        # (bench/bench_localization.py); label 0 is the background.
        count, _, stats, _ = cv2.connectedComponentsWithStats((norm >= threshold).astype(np.uint8), connectivity=8)
        found += [tuple(float(v) for v in stats[k, :4]) for k in range(1, count)]
    boxes = list(dict.fromkeys(found))  # drop exact repeats, keep first-seen order
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def smooth_heatmap(heatmap: np.ndarray, *, sigma: float) -> np.ndarray:
    """Gaussian blur with a standard deviation of ``sigma`` times the map's longer side (0: the map unchanged)."""
    arr = np.asarray(heatmap, dtype=np.float32)
    if sigma < 0:
        raise EvaluationError(f"sigma: the smoothing width must be >= 0, got {sigma}")
    if sigma == 0 or arr.ndim != 2:
        return arr
    import cv2

    return cv2.GaussianBlur(arr, (0, 0), sigmaX=float(sigma) * max(arr.shape), borderType=cv2.BORDER_REPLICATE)


def peak_boxes(
    heatmap: np.ndarray,
    *,
    level: float = labels.LOC_PEAK_LEVEL,
    keep: float = labels.LOC_PEAK_KEEP,
    max_boxes: int = labels.LOC_PEAK_MAX_BOXES,
    min_area: float = labels.LOC_PEAK_MIN_AREA,
    sigma: float = labels.LOC_PEAK_SIGMA,
) -> np.ndarray:
    """Boxes (K, 4) around the strongest regions only: the rule a reader of a heatmap wants.

    Smooth the map (``sigma``, a fraction of its side), min-max scale it to [0, 1], binarise it at ``level``, and
    keep an 8-connected region only when its own maximum reaches ``keep`` times the map's maximum (a secondary
    blob that is clearly weaker is not a finding), its area is at least ``min_area`` of the map, and it is among
    the ``max_boxes`` regions with the highest maxima. Wang's rule instead boxes every region above 60/255 and
    180/255, which on a noisy map is several false boxes per image (docs/localization.md).
    """
    _check_peak_parameters(level=level, keep=keep, max_boxes=max_boxes, min_area=min_area)
    norm = normalise_heatmap(smooth_heatmap(heatmap, sigma=sigma))
    if norm is None:
        return np.zeros((0, 4), dtype=np.float64)
    import cv2

    norm /= 255.0
    count, regions, stats, _ = cv2.connectedComponentsWithStats((norm >= level).astype(np.uint8), connectivity=8)
    peaks = np.zeros(count, dtype=np.float64)
    np.maximum.at(peaks, regions.ravel(), norm.ravel())
    candidates = [k for k in range(1, count)
                  if peaks[k] >= keep and stats[k, cv2.CC_STAT_AREA] >= min_area * norm.size]
    candidates.sort(key=lambda k: (-peaks[k], -stats[k, cv2.CC_STAT_AREA]))
    boxes = [[float(v) for v in stats[k, :4]] for k in candidates[:max_boxes]]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _check_peak_parameters(*, level: float, keep: float, max_boxes: int, min_area: float) -> None:
    if not 0.0 < level <= 1.0:
        raise EvaluationError(f"level: the binarising level must be in (0, 1], got {level}")
    if not 0.0 <= keep <= 1.0:
        raise EvaluationError(f"keep: the share of the map's maximum a region must reach is in [0, 1], got {keep}")
    if max_boxes < 1:
        raise EvaluationError(f"max_boxes: must be at least 1, got {max_boxes}")
    if not 0.0 <= min_area < 1.0:
        raise EvaluationError(f"min_area: the smallest region as a share of the map must be in [0, 1), got {min_area}")


@dataclass(frozen=True)
class BoxRule:
    """A named way of turning one heatmap into boxes, with the sentence the outputs print about it."""

    name: str
    boxes: Callable[[np.ndarray], np.ndarray]
    summary: str
    params: Mapping[str, object]  # the parameters the rule runs with, recorded in localization.json


def _peak_summary() -> str:
    """The ``peak`` rule in words, leaving out the steps its constants switch off (sigma 0, min_area 0)."""
    smooth = (f"Gaussian-smoothed (sigma {labels.LOC_PEAK_SIGMA:g} of the side), " if labels.LOC_PEAK_SIGMA
              else "")
    area = f" and its area {labels.LOC_PEAK_MIN_AREA:g} of the map" if labels.LOC_PEAK_MIN_AREA else ""
    return (f"strongest regions: {smooth}scaled to [0, 1], binarised at {labels.LOC_PEAK_LEVEL:g}; a region is kept "
            f"when its maximum reaches {labels.LOC_PEAK_KEEP:g} of the map's maximum{area}, at most "
            f"{labels.LOC_PEAK_MAX_BOXES} per heatmap")


# Registry of heatmap -> boxes rules (``cxrmtl localize --box-rule``). "wang" is Wang et al.'s rule unchanged, so that
# the protocol number stays comparable with the paper; "peak" is the default, measured best on the phantom's boxes
# (bench/bench_cam.py, docs/localization.md). The scoring (IoBB / IoU, accuracy, AFP) is the same for every rule.
BOX_RULES: dict[str, BoxRule] = {
    "wang": BoxRule(
        name="wang", boxes=heatmap_to_boxes, params={"thresholds": list(labels.LOC_HEATMAP_THRESHOLDS)},
        summary=f"Wang et al. 2017: normalised to [0, 255], binarised at "
                f"{' and '.join(str(t) for t in labels.LOC_HEATMAP_THRESHOLDS)} separately, one box per 8-connected "
                "region of either binary map"),
    "peak": BoxRule(
        name="peak", boxes=peak_boxes,
        params={"sigma": labels.LOC_PEAK_SIGMA, "level": labels.LOC_PEAK_LEVEL, "keep": labels.LOC_PEAK_KEEP,
                "max_boxes": labels.LOC_PEAK_MAX_BOXES, "min_area": labels.LOC_PEAK_MIN_AREA},
        summary=_peak_summary()),
}
DEFAULT_BOX_RULE = labels.LOC_DEFAULT_BOX_RULE


def box_rule(name: str) -> BoxRule:
    """The ``BOX_RULES`` entry called ``name``."""
    if name not in BOX_RULES:
        raise EvaluationError(f"box rule: unknown rule {name!r}; expected one of {', '.join(BOX_RULES)}")
    return BOX_RULES[name]


def heatmap_peak(heatmap: np.ndarray) -> tuple[float, float] | None:
    """(x, y) of the centre of the heatmap's maximum pixel (first one in row-major order); None for a flat map."""
    arr = np.asarray(heatmap, dtype=np.float64)
    if normalise_heatmap(arr) is None:
        return None
    row, col = np.unravel_index(int(np.argmax(arr)), arr.shape)
    return float(col) + 0.5, float(row) + 0.5


def point_in_boxes(point: tuple[float, float] | None, boxes: np.ndarray) -> bool:
    """Whether ``point`` (x, y) lies inside any x, y, w, h box (edges included); False for no point."""
    if point is None:
        return False
    arr = _check_boxes(boxes, field="boxes")
    x, y = point
    inside = (arr[:, 0] <= x) & (x <= arr[:, 0] + arr[:, 2]) & (arr[:, 1] <= y) & (y <= arr[:, 1] + arr[:, 3])
    return bool(inside.any())


def pointing_game(cases: Iterable[LocalizationCase]) -> pd.DataFrame:
    """Pointing-game hit rate per finding: columns finding, hits, cases, hit_rate (canonical finding order).

    A hit is a case whose heatmap maximum (``LocalizationCase.peak``) lies inside one of its true boxes; a flat map
    (no peak) is a miss. Zhang et al. (ECCV 2016) allow a 15-pixel tolerance at 224 px; here none (strict).
    """
    by_finding: dict[str, list[bool]] = {}
    for case in cases:
        by_finding.setdefault(case.finding, []).append(point_in_boxes(case.peak, case.gt))
    rows = [{"finding": f, "hits": int(sum(by_finding[f])), "cases": len(by_finding[f]),
             "hit_rate": float(np.mean(by_finding[f]))} for f in labels.FINDINGS if f in by_finding]
    return pd.DataFrame(rows, columns=["finding", "hits", "cases", "hit_rate"])


def scale_boxes(boxes: np.ndarray, *, from_size: tuple[float, float], to_size: tuple[float, float]) -> np.ndarray:
    """Rescale x, y, w, h boxes from an image of (width, height) ``from_size`` to one of ``to_size``.

    BBox_List_2017.csv boxes are in the original image's pixels; heatmaps are at the cache size.
    """
    arr = _check_boxes(boxes, field="boxes")
    fw, fh = from_size
    tw, th = to_size
    if min(fw, fh, tw, th) <= 0:
        raise EvaluationError(f"image size: widths and heights must be positive, got from {from_size} to {to_size}")
    factors = np.array([tw / fw, th / fh, tw / fw, th / fh])
    return arr * factors


def _intersection(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    px0, py0 = pred[:, 0:1], pred[:, 1:2]
    px1, py1 = px0 + pred[:, 2:3], py0 + pred[:, 3:4]
    gx0, gy0 = gt[:, 0], gt[:, 1]
    gx1, gy1 = gx0 + gt[:, 2], gy0 + gt[:, 3]
    iw = np.clip(np.minimum(px1, gx1) - np.maximum(px0, gx0), 0.0, None)
    ih = np.clip(np.minimum(py1, gy1) - np.maximum(py0, gy0), 0.0, None)
    return iw * ih


def iobb(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Intersection over the predicted box's area, (P, G): Wang et al.'s IoBB."""
    pred, gt = _check_boxes(pred, field="pred"), _check_boxes(gt, field="gt")
    return _intersection(pred, gt) / (pred[:, 2] * pred[:, 3])[:, None]


def iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Intersection over union, (P, G)."""
    pred, gt = _check_boxes(pred, field="pred"), _check_boxes(gt, field="gt")
    inter = _intersection(pred, gt)
    union = (pred[:, 2] * pred[:, 3])[:, None] + (gt[:, 2] * gt[:, 3])[None, :] - inter
    return inter / union


OVERLAPS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {"iobb": iobb, "iou": iou}
DEFAULT_THRESHOLDS: dict[str, tuple[float, ...]] = {
    "iobb": labels.LOC_IOBB_THRESHOLDS,
    "iou": labels.LOC_IOU_THRESHOLDS,
}


@dataclass(frozen=True)
class LocalizationCase:
    """One (image, finding) pair with ground truth: predicted and true boxes in the same (heatmap) pixels."""

    image: str
    finding: str
    pred: np.ndarray
    gt: np.ndarray
    peak: tuple[float, float] | None = None  # (x, y) of the heatmap's maximum, pixel centre; None: flat map

    def __post_init__(self) -> None:
        if self.finding not in labels.FINDING_INDEX:
            raise EvaluationError(f"finding: {self.finding!r} is not one of labels.FINDINGS (image {self.image})")
        object.__setattr__(self, "pred", _check_boxes(self.pred, field=f"{self.image}/{self.finding} pred"))
        object.__setattr__(self, "gt", _check_boxes(self.gt, field=f"{self.image}/{self.finding} gt"))
        if len(self.gt) == 0:
            raise EvaluationError(f"{self.image}/{self.finding}: a localisation case needs at least one true box")


def _overlap_for(kind: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    if kind not in OVERLAPS:
        raise EvaluationError(f"overlap kind: {kind!r} is not one of {sorted(OVERLAPS)}")
    return OVERLAPS[kind]


def case_outcome(case: LocalizationCase, *, kind: str, threshold: float) -> tuple[bool, int]:
    """(localised, false positives) of one case at one overlap threshold: overlap must exceed T strictly."""
    if len(case.pred) == 0:
        return False, 0
    best = _overlap_for(kind)(case.pred, case.gt).max(axis=1)
    hits = best > threshold
    return bool(hits.any()), int((~hits).sum())


def evaluate_localization(
    cases: Iterable[LocalizationCase], *, kind: str = "iobb", thresholds: Sequence[float] | None = None
) -> pd.DataFrame:
    """Accuracy and AFP per finding and threshold: columns finding, kind, threshold, accuracy, afp, cases.

    Findings follow the canonical order; findings without a case are left out (not reported as zero).
    """
    _overlap_for(kind)
    thresholds = tuple(DEFAULT_THRESHOLDS[kind] if thresholds is None else thresholds)
    by_finding: dict[str, list[LocalizationCase]] = {}
    for case in cases:
        by_finding.setdefault(case.finding, []).append(case)
    rows = []
    for finding in (f for f in labels.FINDINGS if f in by_finding):
        group = by_finding[finding]
        for threshold in thresholds:
            outcomes = [case_outcome(case, kind=kind, threshold=threshold) for case in group]
            rows.append({
                "finding": finding,
                "kind": kind,
                "threshold": float(threshold),
                "accuracy": float(np.mean([hit for hit, _ in outcomes])),
                "afp": float(np.mean([fp for _, fp in outcomes])),
                "cases": len(group),
            })
    return pd.DataFrame(rows, columns=["finding", "kind", "threshold", "accuracy", "afp", "cases"])


def to_cache_boxes(boxes: np.ndarray, *, width: int, height: int, size: int) -> np.ndarray:
    """Map boxes from an original ``width`` x ``height`` image into the ``size`` x ``size`` cache image.

    The cache keeps the centred square (``data.cache.square_crop_box``) and resizes it, so a box is shifted by the
    crop offset, scaled by size / side and clipped to the square; a box wholly outside the square is dropped.
    """
    from cxrmtl.data.cache import square_crop_box

    arr = _check_boxes(boxes, field="boxes")
    x0, y0, side = square_crop_box(int(width), int(height))
    scaled = scale_boxes(arr - np.array([x0, y0, 0.0, 0.0]), from_size=(side, side), to_size=(size, size))
    lo = np.clip(scaled[:, :2], 0.0, size)
    hi = np.clip(scaled[:, :2] + scaled[:, 2:], 0.0, size)
    clipped = np.concatenate([lo, hi - lo], axis=1)
    return clipped[(clipped[:, 2] > 0) & (clipped[:, 3] > 0)]


def image_sizes(table: pd.DataFrame, images: Iterable[str]) -> dict[str, tuple[int, int]]:
    """(width, height) of each image file, read from its header: the frame BBox_List_2017.csv boxes are drawn in.

    Not ``orig_width``/``orig_height``: those are the sizes before NIH downsampled the images to 1024 x 1024 (e.g.
    2992 x 2991), while the boxes are in the 1024 x 1024 PNG (NIH release, BBox_List_2017.csv; Wang et al. 2017);
    the phantom's boxes likewise are in its written images. Images whose file is missing are left out.
    """
    from cxrmtl.data.imageio import probe_image

    paths = dict(zip(table["image"], table["path"], strict=True))
    out = {}
    for image in images:
        path = paths.get(image, "")
        if path:
            info = probe_image(path)
            out[image] = (info.width, info.height)
    return out


def ground_truth_boxes(
    boxes: pd.DataFrame, sizes: Mapping[str, tuple[int, int]], *, size: int, images: Iterable[str] | None = None
) -> dict[tuple[str, str], np.ndarray]:
    """Map (image, finding) -> true boxes in the ``size`` x ``size`` cache image (see ``to_cache_boxes``).

    ``boxes`` is ``NIHIndex.boxes``; ``sizes`` maps an image to the (width, height) its boxes are drawn in
    (``image_sizes``); ``images`` restricts to those names. Images without a size and cases whose boxes all fall
    outside the cached square are left out.
    """
    missing = {"image", "finding", "x", "y", "w", "h"} - set(boxes.columns)
    if missing:
        raise EvaluationError(f"boxes: columns {sorted(missing)} are missing")
    wanted = None if images is None else set(images)
    out: dict[tuple[str, str], np.ndarray] = {}
    for (image, finding), group in boxes.groupby(["image", "finding"], sort=False):
        if (wanted is not None and image not in wanted) or image not in sizes:
            continue
        width, height = sizes[image]
        xywh = group[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
        mapped = to_cache_boxes(xywh, width=int(width), height=int(height), size=size)
        if len(mapped):
            out[(str(image), str(finding))] = mapped
    return out


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def accuracy_rows(
    iobb_result: pd.DataFrame, *, reference: Mapping[str, float] | None = labels.WANG_IOBB05_ACCURACY
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: accuracy per finding at each T(IoBB), AFP at 0.5, Wang et al.'s accuracy at 0.5.

    ``reference=None`` leaves the Wang column out (data not comparable with the paper: phantom or a subset).
    """
    thresholds = sorted(iobb_result["threshold"].unique())
    head = ["finding", "cases", *(f"T(IoBB)={t:g}" for t in thresholds), "AFP@0.5"]
    head += ["Wang 2017 @0.5"] if reference is not None else []
    rows = []
    for finding, group in iobb_result.groupby("finding", sort=False):
        acc = dict(zip(group["threshold"], group["accuracy"], strict=True))
        afp = dict(zip(group["threshold"], group["afp"], strict=True))
        row = [str(finding), str(int(group["cases"].iloc[0])), *(f"{acc[t]:.3f}" for t in thresholds),
               f"{afp[0.5]:.2f}" if 0.5 in afp else "-"]
        if reference is not None:
            ref = reference.get(str(finding))
            row.append(f"{ref:.3f}" if ref is not None else "-")
        rows.append(row)
    return head, rows


def finding_rows(
    iobb_result: pd.DataFrame, pointing: pd.DataFrame, *, comparable: bool,
    reference: Mapping[str, float] = labels.WANG_IOBB05_ACCURACY,
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows, one per boxed finding and a mean row: accuracy at T(IoBB)=0.5, AFP there, pointing-game
    hit rate, and Wang et al.'s published accuracy at T(IoBB)=0.5.

    Wang's column is always there; off the complete official NIH test split (``comparable`` False) its header says
    the numbers are from real NIH images, not from this data, so that nobody reads the two as one comparison.
    """
    wang = "Wang 2017 @0.5" if comparable else "Wang 2017 @0.5, real NIH test (not this data)"
    head = ["finding", "cases", "T(IoBB)=0.5 accuracy", "AFP", "pointing", wang]
    at = iobb_result[iobb_result["threshold"] == 0.5].set_index("finding") if not iobb_result.empty else iobb_result
    hits = pointing.set_index("finding")["hit_rate"] if not pointing.empty else pd.Series(dtype=float)
    rows = []
    for finding in at.index:
        point = hits.get(finding)
        ref = reference.get(str(finding))
        rows.append([str(finding), str(int(at.loc[finding, "cases"])), f"{at.loc[finding, 'accuracy']:.3f}",
                     f"{at.loc[finding, 'afp']:.2f}", "-" if point is None else f"{point:.3f}",
                     "-" if ref is None else f"{ref:.3f}"])
    if len(at):
        refs = [reference[f] for f in at.index if f in reference]
        rows.append([f"mean over {len(at)} findings", str(int(at["cases"].sum())), f"{at['accuracy'].mean():.3f}",
                     f"{at['afp'].mean():.2f}", f"{hits.reindex(at.index).mean():.3f}" if len(hits) else "-",
                     f"{np.mean(refs):.3f}" if refs else "-"])
    return head, rows


def finding_table(iobb_result: pd.DataFrame, pointing: pd.DataFrame, *, comparable: bool) -> str:
    """Markdown of ``finding_rows``."""
    if iobb_result.empty:
        return "_no localisation cases (no ground-truth boxes among the evaluated images)_\n"
    return _markdown(*finding_rows(iobb_result, pointing, comparable=comparable))


def iou_rows(iou_result: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: "accuracy (AFP)" per finding at each T(IoU)."""
    thresholds = sorted(iou_result["threshold"].unique())
    head = ["finding", "cases", *(f"T(IoU)={t:g}" for t in thresholds)]
    rows = []
    for finding, group in iou_result.groupby("finding", sort=False):
        cells = [str(finding), str(int(group["cases"].iloc[0]))]
        cells += [f"{a:.3f} ({f:.2f})" for a, f in zip(group["accuracy"], group["afp"], strict=True)]
        rows.append(cells)
    return head, rows


def accuracy_table(
    iobb_result: pd.DataFrame, *, reference: Mapping[str, float] | None = labels.WANG_IOBB05_ACCURACY
) -> str:
    """Markdown of ``accuracy_rows``."""
    if iobb_result.empty:
        return "_no localisation cases (no ground-truth boxes among the evaluated images)_\n"
    return _markdown(*accuracy_rows(iobb_result, reference=reference))


def pointing_rows(pointing: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the pointing game: hit rate per finding and the mean over the findings."""
    rows = [[str(r.finding), str(int(r.cases)), str(int(r.hits)), f"{r.hit_rate:.3f}"] for r in pointing.itertuples()]
    if len(pointing):
        rows.append(["mean over findings", str(int(pointing["cases"].sum())), str(int(pointing["hits"].sum())),
                     f"{pointing['hit_rate'].mean():.3f}"])
    return ["finding", "cases", "hits", "hit rate"], rows


def pointing_table(pointing: pd.DataFrame) -> str:
    """Markdown of ``pointing_rows``."""
    if pointing.empty:
        return "_no localisation cases_\n"
    return _markdown(*pointing_rows(pointing))


def iou_table(iou_result: pd.DataFrame) -> str:
    """Markdown of ``iou_rows``; cells are accuracy (average false positives per image)."""
    if iou_result.empty:
        return "_no localisation cases_\n"
    return _markdown(*iou_rows(iou_result)) + "\nCells: accuracy (average false positives per image).\n"
