"""Config: YAML -> frozen dataclasses, typed --set overrides, clear errors naming the field, round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cxrmtl.config import Config, apply_overrides, config_from_yaml_text, dump_config, load_config
from cxrmtl.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_frozen_and_valid() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    assert cfg.model.backbone == "densenet121"
    assert cfg.data.pixel_mean == 0.5


def test_overrides_are_typed() -> None:
    cfg = apply_overrides(Config(), [
        "optim.lr=3e-4", "train.epochs=7", "model.channels_last=false", "tasks.specs=findings,age",
        "augment.scale=[0.5, 0.9]", "weighting.weights.age=0.2", "model.pretrained=/tmp/w.pth", "train.amp=bf16",
    ])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 7 and cfg.model.channels_last is False
    assert cfg.tasks.specs == ("findings", "age")
    assert cfg.augment.scale == (0.5, 0.9)
    assert cfg.weighting.weights == {"age": 0.2}
    assert cfg.model.pretrained == "/tmp/w.pth"
    assert apply_overrides(cfg, ["model.pretrained=true"]).model.pretrained is True


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lrr=1", "lrr"),
        ("nope.x=1", "nope"),
        ("train.epochs=many", "train.epochs"),
        ("train.epochs=0", "train.epochs"),
        ("model.channels_last=maybe", "model.channels_last"),
        ("augment.scale=[0.5]", "augment.scale"),
        ("train.amp=fp8", "train.amp"),
        ("seed", "key=value"),
        ("optim.lr.x=1", "optim.lr"),
    ],
)
def test_bad_overrides_name_the_field(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("[", r"\[")) as info:
        cfg = apply_overrides(Config(), [override])
        from cxrmtl.config import validate

        validate(cfg)
    assert needle in str(info.value)


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = apply_overrides(Config(), ["tasks.specs=[findings:Pneumothorax]", "weighting.method=pcgrad"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert config_from_yaml_text(dump_config(cfg), where="x") == cfg


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [1, 2}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*invalid YAML"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml: train: unknown key\(s\) epoch"):
        load_config(unknown)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / name, ["train.epochs=1"])
    assert cfg.train.epochs == 1
    assert cfg.tasks.specs
