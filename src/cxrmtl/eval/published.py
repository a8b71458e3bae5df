"""Published per-finding AUROC on NIH ChestX-ray14, for the comparison table of the report.

Split matters: "official" = the official NIH train_val/test split; "random" = the authors' own random patient
split. Numbers from different splits are never comparable. Finding order follows labels.FINDINGS. Each entry cites
its paper; docs/published.md lists the same sources for readers.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrmtl import labels as L


@dataclass(frozen=True)
class Published:
    """One published model: per-finding AUROC (labels.FINDINGS order), reported mean, split and source."""

    key: str
    title: str
    split: str  # "official" | "random"
    auroc: tuple[float, ...]
    mean: float
    source: str

    def by_finding(self) -> dict[str, float]:
        return dict(zip(L.FINDINGS, self.auroc, strict=True))


# Wang et al., "ChestX-ray8", arXiv:1705.02315, appendix table 17 (ResNet-50, official split).
WANG2017 = Published(
    key="wang2017",
    title="Wang 2017 ResNet-50",
    split="official",
    auroc=(0.7003, 0.8100, 0.7585, 0.6614, 0.6933, 0.6687, 0.6580,
           0.7993, 0.7032, 0.8052, 0.8330, 0.7859, 0.6835, 0.8717),
    mean=0.745,
    source="Wang et al., ChestX-ray8, CVPR 2017, https://arxiv.org/abs/1705.02315, appendix table 17",
)
# Rajpurkar et al., "CheXNet", arXiv:1711.05225, table 2 (DenseNet-121, authors' random patient split).
CHEXNET2017 = Published(
    key="chexnet2017",
    title="CheXNet 2017 DenseNet-121",
    split="random",
    auroc=(0.8094, 0.9248, 0.8638, 0.7345, 0.8676, 0.7802, 0.7680,
           0.8887, 0.7901, 0.8878, 0.9371, 0.8047, 0.8062, 0.9164),
    mean=0.841,
    source="Rajpurkar et al., CheXNet, https://arxiv.org/abs/1711.05225, table 2",
)
# Taslimi et al. 2022, SwinCheX (Swin Transformer, official split), arXiv:2206.04246; the mean is from the abstract.
SWINCHEX2022 = Published(
    key="swinchex2022",
    title="SwinCheX 2022",
    split="official",
    auroc=(0.781, 0.875, 0.824, 0.701, 0.822, 0.780, 0.713, 0.871, 0.748, 0.848, 0.914, 0.826, 0.778, 0.855),
    mean=0.810,
    source="Taslimi et al., SwinCheX, https://arxiv.org/abs/2206.04246, 2022; mean from the abstract",
)

PUBLISHED: tuple[Published, ...] = (WANG2017, CHEXNET2017, SWINCHEX2022)
# The papers' means average all 14 findings.
PUBLISHED_FINDINGS: tuple[str, ...] = L.FINDINGS
