"""Draw docs/phantom.png: a normal PA and AP chest and one example of every finding with its box.

Usage: python scripts/phantom_gallery.py [OUT_PNG] [--size 256] [--difficulty 0.5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from cxrmtl.labels import FINDINGS, PHANTOM_DEFAULT_DIFFICULTY
from cxrmtl.phantom.generate import render_study, single_plan

REPO = Path(__file__).resolve().parents[1]


def gallery(out: Path, *, size: int, difficulty: float) -> None:
    """Render the panels and save the figure."""
    panels = [("Normal PA (M, 45)", (), "M", 45, "PA"), ("Normal AP (F, 70)", (), "F", 70, "AP")]
    panels += [(name, (name,), "M" if i % 2 else "F", 40 + 3 * i, "PA") for i, name in enumerate(FINDINGS)]
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.2, rows * 3.4))
    for ax, (title, findings, sex, age, view) in zip(axes.flat, panels, strict=False):
        plan = single_plan(findings=findings, sex=sex, age=age, view=view, seed=7, patient_id=3 + len(title))
        image, boxes = render_study(plan, 0, size=size, difficulty=difficulty)
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        for _, x, y, w, h in boxes:
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="#ff3b30", linewidth=1.2))
        ax.set_title(title, fontsize=10)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"cxrmtl phantom (difficulty {difficulty}; red: BBox_List box)", fontsize=12)
    fig.tight_layout()
    fig.savefig(out, dpi=64)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", default=str(REPO / "docs" / "phantom.png"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--difficulty", type=float, default=PHANTOM_DEFAULT_DIFFICULTY)
    args = parser.parse_args()
    gallery(Path(args.out), size=args.size, difficulty=args.difficulty)


if __name__ == "__main__":
    main()
