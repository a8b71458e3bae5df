"""MultiTaskNet and the backbone factory: shapes, parameter groups, local weight files (offline: test_pretrained)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from cxrmtl.errors import CheckpointError, ConfigError
from cxrmtl.models import MultiTaskNet, create_backbone, head_key
from cxrmtl.tasks import build_tasks

SPECS = ["findings", "abnormal", "age", "sex", "view", "findings:Pneumothorax"]
# resnet18 = CPU demo default, densenet121 = CheXNet default, test_resnet = a tiny timm model for fast tests.
BACKBONES = ["resnet18", "densenet121", "test_resnet"]


@pytest.fixture(scope="module")
def tasks() -> list:
    return build_tasks(SPECS)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_returns_one_output_per_task(backbone: str, tasks: list) -> None:
    torch.manual_seed(0)
    net = MultiTaskNet(backbone=backbone, tasks=tasks).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 64, 64))
    assert list(out) == [t.name for t in tasks]
    for task in tasks:
        assert out[task.name].shape == (2, task.out_dim) and torch.isfinite(out[task.name]).all()
    assert net.backbone.conv1.in_channels == 1 if backbone.endswith("resnet18") else True
    assert net.features(torch.randn(2, 1, 64, 64)).shape == (2, net.num_features)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_shared_and_head_parameters_partition_the_model(backbone: str, tasks: list) -> None:
    net = MultiTaskNet(backbone=backbone, tasks=tasks)
    shared = {id(p) for p in net.shared_parameters()}
    heads = {id(p) for p in net.head_parameters()}
    assert shared == {id(p) for p in net.backbone.parameters()}
    assert not shared & heads and shared | heads == {id(p) for p in net.parameters()}
    one = net.head_parameters("findings:Pneumothorax")
    assert [p.shape for p in one] == [torch.Size([1, net.num_features]), torch.Size([1])]


def test_every_parameter_gets_a_gradient(tasks: list) -> None:
    net = MultiTaskNet(backbone="test_resnet", tasks=tasks, drop_rate=0.2)
    out = net(torch.randn(3, 1, 32, 32))
    sum(v.sum() for v in out.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_bf16_autocast_and_channels_last_forward(tasks: list) -> None:
    net = MultiTaskNet(backbone="test_resnet", tasks=tasks).to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert all(torch.isfinite(v.float()).all() for v in out.values())


def test_head_keys_are_safe_module_names() -> None:
    assert head_key("findings:Effusion,Mass") == "findings:Effusion,Mass"
    assert head_key("a.b") == "a_b"


def test_unknown_backbone_names_close_matches() -> None:
    with pytest.raises(ConfigError, match=r"'resnet181' is not a timm model; close matches: \[.*'resnet18'"):
        create_backbone("resnet181")


def test_bad_model_arguments_raise_config_error(tasks: list) -> None:
    with pytest.raises(ConfigError, match="drop_rate"):
        MultiTaskNet(backbone="test_resnet", tasks=tasks, drop_rate=1.5)
    with pytest.raises(ConfigError, match="at least one task"):
        MultiTaskNet(backbone="test_resnet", tasks=[])


def _rgb_backbone_state(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model(name, pretrained=False, in_chans=3, num_classes=1000).state_dict()


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_local_imagenet_style_weights_fold_rgb_stem_and_drop_classifier(tmp_path: Path, fmt: str) -> None:
    state = _rgb_backbone_state("test_resnet")
    path = tmp_path / f"w.{fmt}"
    if fmt == "pt":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = create_backbone("test_resnet", pretrained=path)
    got = model.state_dict()
    stem = "conv1.0.weight" if "conv1.0.weight" in got else "conv1.weight"
    assert torch.allclose(got[stem], state[stem].sum(dim=1, keepdim=True))  # timm adapt_input_conv for 1 channel
    others = [k for k in got if k != stem]
    assert all(torch.equal(got[k], state[k]) for k in others)


def test_local_cxrmtl_checkpoint_restores_backbone(tmp_path: Path, tasks: list) -> None:
    torch.manual_seed(2)
    source = MultiTaskNet(backbone="test_resnet", tasks=tasks)
    path = tmp_path / "last.pt"
    # what DDP + torch.compile would save, nested the way a training checkpoint nests it
    torch.save({"model": {f"module._orig_mod.{k}": v for k, v in source.state_dict().items()}, "step": 3}, path)
    net = MultiTaskNet(backbone="test_resnet", tasks=build_tasks(["sex"]), pretrained=str(path))
    src = source.backbone.state_dict()
    assert all(torch.equal(v, src[k]) for k, v in net.backbone.state_dict().items())


@pytest.mark.parametrize("pretrained", [False, "", "false", "none"])
def test_pretrained_off_values_mean_random_init(pretrained: object) -> None:
    assert create_backbone("test_resnet", pretrained=pretrained) is not None


def test_unusable_weight_files_raise_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="pretrained weights file not found"):
        create_backbone("test_resnet", pretrained=tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.pt: cannot read weights"):
        create_backbone("test_resnet", pretrained=garbage)
    other = tmp_path / "other.pt"
    torch.save(_rgb_backbone_state("test_efficientnet"), other)
    with pytest.raises(CheckpointError, match="do not fit this backbone"):
        create_backbone("test_resnet", pretrained=other)
    shape = tmp_path / "shape.pt"
    state = create_backbone("test_resnet").state_dict()
    key = next(k for k, v in state.items() if v.dim() == 4 and k != "conv1.weight" and not k.startswith("conv1."))
    state[key] = torch.zeros(3, 3, 1, 1)
    torch.save(state, shape)
    with pytest.raises(CheckpointError, match=f"{key} has shape"):
        create_backbone("test_resnet", pretrained=shape)
    nested = tmp_path / "nested.pt"
    torch.save({"epoch": 3, "notes": {"a": 1}}, nested)
    with pytest.raises(CheckpointError, match="no state dict found"):
        create_backbone("test_resnet", pretrained=nested)


def test_age_head_starts_at_the_nih_mean_age(tasks: list) -> None:
    from cxrmtl.labels import AGE_PRIOR_YEARS

    net = MultiTaskNet(backbone="test_resnet", tasks=tasks).eval()
    age = next(t for t in tasks if t.name == "age")
    with torch.no_grad():
        years = age.predict(net.heads["age"](torch.zeros(1, net.num_features)))
    assert years.item() == pytest.approx(AGE_PRIOR_YEARS, abs=1e-4)
    assert net.heads["sex"].bias.abs().max() < 1  # classification heads keep PyTorch's default init
