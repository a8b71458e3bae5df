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


def test_yaml_off_is_the_word_off_in_a_text_field(tmp_path) -> None:
    # YAML 1.1 reads a bare `off` as False: the amp mode the user wrote is still "off", in a file and an override.
    assert apply_overrides(Config(), ["train.amp=off"]).train.amp == "off"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\n", encoding="utf-8")
    assert load_config(path).train.amp == "off"


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
        ("train.amp=yes", "train.amp"),
        ("seed", "key=value"),
        ("optim.lr.x=1", "optim.lr"),
        ("data.rare_positive_fraction=0", "data.rare_positive_fraction"),
        ("data.rare_positive_fraction=1.5", "data.rare_positive_fraction"),
        ("data.rare_findings=[Hernai]", "data.rare_findings: unknown finding"),
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


# Training configs; triage_default.yaml is the urgency section (tested in tests/triage).
TRAINING_CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("triage"))


@pytest.mark.parametrize("name", TRAINING_CONFIGS)
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / name, ["train.epochs=1"])
    assert cfg.train.epochs == 1
    assert cfg.tasks.specs


def test_duplicated_key_is_refused_naming_key_file_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("seed: 1\noptim:\n  lr: 0.001\n  weight_decay: 0.0\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:5:3: invalid YAML: duplicate key 'lr' \(first given on line 3\)"):
        load_config(path)
    top = tmp_path / "top.yaml"
    top.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        load_config(top)
    with pytest.raises(ConfigError, match="duplicate key"):
        config_from_yaml_text("train:\n  epochs: 1\ntrain:\n  epochs: 2\n", where="run/config.yaml")


def test_yaml_merge_keys_may_still_be_overridden() -> None:
    text = "optim: &o {lr: 0.01, weight_decay: 0.0}\ntrain: {epochs: 2}\n"
    assert config_from_yaml_text(text, where="x").optim.lr == pytest.approx(0.01)
    import yaml

    from cxrmtl.config import UniqueKeyLoader

    merged = yaml.load("a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  p: 3\n", Loader=UniqueKeyLoader)
    assert merged["b"] == {"p": 3, "q": 2}


def test_invalid_yaml_is_one_line_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 3\n   x: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{path}:3:") and "mapping values are not allowed here" in str(info.value)


def test_unreadable_config_files_are_one_line_naming_the_file(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yaml: not UTF-8 text \(byte 0xe9 on line 1\)"):
        load_config(latin)
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"folder\.yaml: is a folder, not a config file"):
        load_config(folder)
    below_file = latin / "x.yaml"
    with pytest.raises(ConfigError, match=r"latin\.yaml/x\.yaml: cannot read config"):
        load_config(below_file)
