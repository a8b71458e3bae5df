"""Grad-CAM through pytorch-grad-cam on tiny real networks: the map must land where the evidence is."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

from cxrmtl import labels
from cxrmtl.data.loader import normalize
from cxrmtl.errors import EvaluationError
from cxrmtl.localize.cam import grad_cam, resolve_target_layer
from cxrmtl.localize.localization import LocalizationCase, evaluate_localization, heatmap_to_boxes


class BlobNet(nn.Module):
    """conv (copies the input) -> ReLU -> global average pool -> per-task linear heads; returns a dict by task.

    With a GAP + linear head Grad-CAM equals CAM: weight x activation, so for a finding with a positive weight the
    map is the ReLU of the input itself and a bright square is exactly where the heatmap is.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, kernel_size=1, bias=False)
        self.heads = nn.ModuleDict({"findings": nn.Linear(1, 3), "age": nn.Linear(1, 1)})
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.heads["findings"].weight.copy_(torch.tensor([[2.0], [-1.0], [0.5]]))
            self.heads["findings"].bias.zero_()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return {name: head(pooled).squeeze(-1) if name == "age" else head(pooled) for name, head in self.heads.items()}


def _images() -> torch.Tensor:
    images = np.zeros((2, 32, 32), dtype=np.uint8)
    images[0, 4:12, 20:28] = 255  # square at x=20, y=4, 8x8
    images[1, 16:30, 2:10] = 255  # x=2, y=16, 8 wide, 14 high
    return normalize(torch.from_numpy(images).unsqueeze(1), mean=labels.PIXEL_MEAN, std=labels.PIXEL_STD)


def test_grad_cam_box_lands_on_the_bright_square() -> None:
    model = BlobNet()
    maps = grad_cam(model, _images(), task="findings", columns=[0, 2])
    assert maps.shape == (2, 32, 32) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    truth = [(20, 4, 8, 8), (2, 16, 8, 14)]
    cases = [
        LocalizationCase(image=f"{i}.png", finding="Mass", pred=heatmap_to_boxes(maps[i]), gt=np.array([truth[i]]))
        for i in range(2)
    ]
    assert [c.pred.tolist() for c in cases] == [[list(truth[0])], [list(truth[1])]]
    result = evaluate_localization(cases, kind="iou", thresholds=[0.9])
    assert result["accuracy"].tolist() == [1.0] and result["afp"].tolist() == [0.0]


def test_grad_cam_negative_weight_points_away_from_the_square_and_single_output_tasks_work() -> None:
    model = BlobNet()
    # weight -1: the square argues against it (Grad-CAM's spatially averaged gradient, named explicitly)
    maps = grad_cam(model, _images(), task="findings", columns=[1, 1], method="gradcam")
    # The CAM layer is the conv (before the ReLU): background activations are negative, so with a negative channel
    # weight the background is the positive evidence and the square is exactly zero.
    assert np.all(maps[0, 4:12, 20:28] == 0) and maps[0, 0, 0] == pytest.approx(1.0, abs=1e-5)
    age = grad_cam(model, _images(), task="age", columns=[0, 0])  # a (B,) output is treated as (B, 1)
    assert age.shape == (2, 32, 32)


def test_grad_cam_restores_training_mode_and_checks_arguments() -> None:
    model = BlobNet().train()
    grad_cam(model, _images(), task="findings", columns=[0, 0])
    assert model.training
    with pytest.raises(EvaluationError, match="no output 'sex'"):
        grad_cam(model, _images(), task="sex", columns=[0, 0])
    with pytest.raises(EvaluationError, match="out of range"):
        grad_cam(model, _images(), task="findings", columns=[0, 3])
    with pytest.raises(EvaluationError, match="2 images"):
        grad_cam(model, _images(), task="findings", columns=[0])
    with pytest.raises(EvaluationError, match="no submodule"):
        grad_cam(model, _images(), task="findings", columns=[0, 0], layer="backbone.nope")


class TimmMultiTask(nn.Module):
    """A timm backbone (ResNet-10t, the smallest ResNet) with a findings head: the shape of cxrmtl's MultiTaskNet."""

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model("resnet10t", pretrained=False, in_chans=1, num_classes=0)
        self.heads = nn.ModuleDict({"findings": nn.Linear(self.backbone.num_features, 14)})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        return {name: head(feats) for name, head in self.heads.items()}


def test_timm_backbone_target_layer_and_cam() -> None:
    torch.manual_seed(0)
    model = TimmMultiTask().eval()
    assert resolve_target_layer(model) is model.backbone.layer4  # timm feature_info: last stage
    assert resolve_target_layer(model, layer="backbone.layer3") is model.backbone.layer3
    maps = grad_cam(model, _images(), task="findings", columns=[0, 13])
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()


def test_resolver_falls_back_to_last_conv_and_fails_clearly() -> None:
    model = BlobNet()
    assert resolve_target_layer(model) is model.conv
    with pytest.raises(EvaluationError, match="no 2-D convolution"):
        resolve_target_layer(nn.Sequential(nn.Linear(2, 2)))


class ReluBlobNet(BlobNet):
    """BlobNet with the ReLU as a module, so the CAM can be taken after it: Grad-CAM++'s weights assume
    non-negative activations (Chattopadhay et al. 2018), as a ResNet stage's output is."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.act(self.conv(x)).mean(dim=(2, 3))
        return {name: head(pooled).squeeze(-1) if name == "age" else head(pooled) for name, head in self.heads.items()}


@pytest.mark.parametrize("method", labels.LOC_CAM_METHODS)
def test_every_cam_method_finds_the_bright_square_and_points_into_it(method: str) -> None:
    from cxrmtl.localize.localization import heatmap_peak, point_in_boxes

    maps = grad_cam(ReluBlobNet(), _images(), task="findings", columns=[0, 2], method=method, layer="act")
    assert maps.shape == (2, 32, 32)
    truth = [np.array([[20, 4, 8, 8]]), np.array([[2, 16, 8, 14]])]
    for heat, gt in zip(maps, truth, strict=True):
        assert point_in_boxes(heatmap_peak(heat), gt)
        case = LocalizationCase(image="x.png", finding="Mass", pred=heatmap_to_boxes(heat), gt=gt)
        assert evaluate_localization([case], kind="iobb", thresholds=[0.5])["accuracy"].tolist() == [1.0]


def test_cam_registry_matches_the_cli_choices_and_refuses_unknown_methods() -> None:
    from cxrmtl.localize.cam import CAM_METHODS, DEFAULT_CAM

    assert tuple(CAM_METHODS) == labels.LOC_CAM_METHODS and DEFAULT_CAM in CAM_METHODS
    assert set(labels.LOC_CAM_TITLES) == set(CAM_METHODS)
    with pytest.raises(EvaluationError, match="unknown method 'scorecam'"):
        grad_cam(BlobNet(), _images(), task="findings", columns=[0, 0], method="scorecam")


def test_default_layer_is_the_deepest_stage_fine_enough_for_a_box() -> None:
    from cxrmtl.localize.cam import layer_name

    net = timm.create_model("resnet18", num_classes=0, in_chans=1)
    assert layer_name(net) == "layer4"  # no size: the last stage, as before
    assert layer_name(net, image_size=128, min_side=8) == "layer3"  # 128 / 16 = 8 cells a side
    assert layer_name(net, image_size=128, min_side=16) == "layer2"
    assert layer_name(net, image_size=512, min_side=8) == "layer4"  # 512 / 32 = 16: the last stage is fine enough
    assert layer_name(net, image_size=16, min_side=64) == "layer4"  # nothing fine enough: the last stage
    assert layer_name(net, layer="layer1", image_size=128, min_side=8) == "layer1"  # a named layer wins


def test_default_layers_are_the_deepest_stages_fine_enough_and_a_plus_joins_named_ones() -> None:
    from cxrmtl.localize.cam import layer_name, resolve_target_layers

    net = timm.create_model("resnet18", num_classes=0, in_chans=1)
    assert layer_name(net, image_size=128, min_side=8, stages=2) == "layer2+layer3"  # 16 x 16 and 8 x 8
    assert layer_name(net, image_size=512, min_side=8, stages=2) == "layer3+layer4"
    assert layer_name(net, stages=2) == "layer3+layer4"  # no size: the last two stages
    assert resolve_target_layers(net, layer="layer1+layer2") == [net.layer1, net.layer2]
    with pytest.raises(EvaluationError, match="layer9"):
        resolve_target_layers(net, layer="layer2+layer9")
    with pytest.raises(EvaluationError, match="stages"):
        resolve_target_layers(net, stages=0)


def test_two_layer_cam_is_the_mean_of_the_two_scaled_maps() -> None:
    torch.manual_seed(0)
    model = TimmMultiTask().eval()
    x = _images()
    one = [grad_cam(model, x, task="findings", columns=[0, 13], layer=f"backbone.{n}") for n in ("layer3", "layer4")]
    both = grad_cam(model, x, task="findings", columns=[0, 13], layer="backbone.layer3+backbone.layer4")
    mean = (one[0] + one[1]) / 2
    for b in range(2):  # pytorch-grad-cam averages the per-layer [0, 1] maps, then min-max scales the mean again
        expected = (mean[b] - mean[b].min()) / (mean[b].max() - mean[b].min() + 1e-7)
        assert np.allclose(both[b], expected, atol=1e-4)
