"""Models: the timm backbone factory and the multitask network (backbone -> dict of task heads)."""

from cxrmtl.models.backbone import (
    PretrainedWeightsWarning,
    create_backbone,
    load_backbone_weights,
    pretrained_source,
    read_state_dict,
)
from cxrmtl.models.net import MultiTaskNet, head_key

__all__ = [
    "MultiTaskNet",
    "PretrainedWeightsWarning",
    "create_backbone",
    "head_key",
    "load_backbone_weights",
    "pretrained_source",
    "read_state_dict",
]
