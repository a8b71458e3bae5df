"""What ``cxrmtl data check`` reports about an NIH-layout folder, as one JSON-ready dict.

Counts per split (images and patients), per-finding prevalence per split, the official train_val / test totals,
CSV rows in neither list, list names missing from the CSV, missing image files and unreadable ones. A broken
layout raises (``DataLayoutError`` from ``load_index``) or, when the metadata is fine but not one listed image exists,
is named in ``report["layout_errors"]`` (the command prints the report, then the error, and exits 2); some missing
or unreadable images are reported, never fatal (a partial download is a usable subset).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cxrmtl import labels
from cxrmtl.data.imageio import probe_image, read_gray
from cxrmtl.data.nih import NIHIndex, load_index
from cxrmtl.errors import ConfigError, ImageReadError

DEFAULT_EXAMPLES = 20  # how many names each truncated list in the report shows


def check_data(
    root: Path,
    *,
    metadata_only: bool = False,
    decode: bool = False,
    workers: int = 4,
    examples: int = DEFAULT_EXAMPLES,
    val_fraction: float = labels.DEFAULT_VAL_FRACTION,
    split_seed: int = labels.DEFAULT_SPLIT_SEED,
) -> dict[str, Any]:
    """Build the index of ``root`` and summarise it; images are checked unless ``metadata_only``.

    ``decode=False`` checks each image's header and end marker (fast, catches missing, empty, truncated and
    non-image files); ``decode=True`` fully decodes every image with ``read_gray`` on ``workers`` threads.
    """
    if workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers}")
    index = load_index(root, val_fraction=val_fraction, split_seed=split_seed, find_images=not metadata_only)
    report: dict[str, Any] = {
        "root": str(index.root),
        "metadata_file": index.layout.metadata_file,
        "boxes_file": index.layout.boxes_file,
        "total": _counts(index, np.arange(len(index))),
        "official": _official(index),
        "splits": {split: _split_summary(index, split) for split in labels.SPLITS},
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "unlisted_rows": _listing(index.layout.unlisted, examples),
        "list_names_not_in_csv": _listing(index.layout.unknown_list_names, examples),
        "implausible_ages_set_missing": index.layout.implausible_ages,
        "boxes": {"boxes": len(index.boxes), "images": int(index.boxes["image"].nunique())},
        "images": _image_report(index, metadata_only=metadata_only, decode=decode, workers=workers, examples=examples),
    }
    report["layout_errors"] = layout_errors(report)
    return report


def layout_errors(report: dict[str, Any]) -> list[str]:
    """Problems that make the folder unusable although its metadata parsed: today, not one listed image exists."""
    images, total = report["images"], report["total"]["images"]
    if not images.get("checked") or total == 0 or images["found"] > 0:
        return []
    folders = ", ".join(images["folders"]) or "none (expected images/ or images_0XX/images/)"
    return [f"{report['root']}: none of the {total:,} images listed in {Path(report['metadata_file']).name} exists "
            f"(image folders: {folders}); use --metadata-only to check the metadata alone"]


def _counts(index: NIHIndex, rows: np.ndarray) -> dict[str, int]:
    patients = index.table["patient_id"].to_numpy()[rows]
    return {"images": len(rows), "patients": len(np.unique(patients))}


def _official(index: NIHIndex) -> dict[str, dict[str, int]]:
    train_val = np.concatenate([index.rows("train"), index.rows("val")])
    return {"train_val": _counts(index, np.sort(train_val)), "test": _counts(index, index.rows("test"))}


def _split_summary(index: NIHIndex, split: str) -> dict[str, Any]:
    rows = index.rows(split)
    findings = index.findings[rows]
    positives = findings.sum(axis=0, dtype=np.int64)
    abnormal = int(findings.any(axis=1).sum())
    total = max(len(rows), 1)
    prevalence = {
        name: {"count": int(n), "prevalence": round(int(n) / total, 6)}
        for name, n in zip(labels.FINDINGS, positives, strict=True)
    }
    prevalence[labels.NO_FINDING] = {
        "count": len(rows) - abnormal,
        "prevalence": round((len(rows) - abnormal) / total, 6),
    }
    return {**_counts(index, rows), "abnormal": abnormal, "findings": prevalence}


def _listing(names: tuple[str, ...] | list[str], examples: int) -> dict[str, Any]:
    return {"count": len(names), "examples": list(names[:examples])}


def _image_report(index: NIHIndex, *, metadata_only: bool, decode: bool, workers: int, examples: int) -> dict[str, Any]:
    if metadata_only:
        return {"checked": False, "mode": "metadata-only"}
    paths = index.table["path"].to_numpy()
    found = paths != ""
    missing = index.table["image"].to_numpy()[~found]
    unreadable = find_unreadable(list(paths[found]), decode=decode, workers=workers)
    return {
        "checked": True,
        "mode": "decode" if decode else "header",
        "folders": list(index.layout.image_dirs),
        "found": int(found.sum()),
        "missing": _listing(list(missing), examples),
        "unreadable": {"count": len(unreadable), "examples": unreadable[:examples]},
        "duplicate_files": _listing(index.layout.duplicate_files, examples),
    }


def find_unreadable(paths: list[str], *, decode: bool, workers: int) -> list[dict[str, str]]:
    """``{"path", "reason"}`` for each path that fails ``read_gray`` (decode) or ``probe_image`` (header check)."""
    check: Callable[[str], object] = read_gray if decode else probe_image
    with ThreadPoolExecutor(max_workers=workers) as pool:  # the decoders release the GIL while decoding
        problems = list(pool.map(lambda p: _problem(check, p), paths))
    return [{"path": p, "reason": r} for p, r in zip(paths, problems, strict=True) if r]


def _problem(check: Callable[[str], object], path: str) -> str:
    try:
        check(path)
    except ImageReadError as exc:
        return exc.reason
    except Exception as exc:  # a reader bug on one file must not end a check of 112,120 files; report it instead
        return f"unexpected {type(exc).__name__}: {exc}"
    return ""


def format_report(report: dict[str, Any]) -> str:
    """The report as plain text for people (the same content as ``--json``)."""
    lines = [f"NIH folder: {report['root']}", f"metadata:   {report['metadata_file']}"]
    total = report["total"]
    lines.append(f"total: {total['images']:,} images, {total['patients']:,} patients")
    for name, counts in report["official"].items():
        lines.append(f"official {name}: {counts['images']:,} images, {counts['patients']:,} patients")
    lines.append(_prevalence_table(report["splits"]))
    lines += _listing_lines("CSV rows in neither split list (split 'unlisted', not served)", report["unlisted_rows"])
    lines += _listing_lines("split-list names not in the CSV (ignored)", report["list_names_not_in_csv"])
    lines.append(f"impossible ages set to missing: {report['implausible_ages_set_missing']}")
    lines.append(f"boxes: {report['boxes']['boxes']} on {report['boxes']['images']} images")
    lines += _image_lines(report["images"])
    return "\n".join(lines)


def _prevalence_table(splits: dict[str, Any]) -> str:
    names = [*labels.FINDINGS, labels.NO_FINDING]
    header = f"{'':<20}" + "".join(f"{split:>22}" for split in splits)
    counts = f"{'images / patients':<20}" + "".join(
        f"{s['images']:>13,} / {s['patients']:<6,}" for s in splits.values()
    )
    rows = [header, counts]
    for name in names:
        cells = "".join(
            f"{s['findings'][name]['count']:>13,} {100 * s['findings'][name]['prevalence']:6.2f}%  "
            for s in splits.values()
        )
        rows.append(f"{name:<20}{cells}")
    return "\n".join(rows)


def _listing_lines(title: str, listing: dict[str, Any]) -> list[str]:
    if not listing["count"]:
        return [f"{title}: 0"]
    shown = ", ".join(str(x) for x in listing["examples"])
    more = (
        f" ... (+{listing['count'] - len(listing['examples'])} more)"
        if listing["count"] > len(listing["examples"])
        else ""
    )
    return [f"{title}: {listing['count']:,}", f"  {shown}{more}"]


def _image_lines(images: dict[str, Any]) -> list[str]:
    if not images["checked"]:
        return ["images: not checked (--metadata-only)"]
    lines = [f"image folders: {', '.join(images['folders']) or 'none found'}", f"images found: {images['found']:,}"]
    lines += _listing_lines("missing images", images["missing"])
    lines += _listing_lines("image names in more than one folder (first folder used)", images["duplicate_files"])
    unreadable = images["unreadable"]
    lines.append(f"unreadable images ({images['mode']} check): {unreadable['count']:,}")
    lines += [f"  {item['path']}: {item['reason']}" for item in unreadable["examples"]]
    if unreadable["count"] > len(unreadable["examples"]):
        lines.append(f"  ... (+{unreadable['count'] - len(unreadable['examples'])} more)")
    return lines
