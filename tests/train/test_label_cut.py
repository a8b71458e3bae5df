"""Training on reduced labels (data.rare_positive_fraction < 1): the training loader masks the dropped positives, the
validation loader keeps every label, the run folder records the cut, and a resume cannot change it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from trainkit import tiny_config

from cxrmtl import labels
from cxrmtl.data.labelcut import kept_count
from cxrmtl.errors import CheckpointError
from cxrmtl.runs.layout import LABEL_CUT_FILE
from cxrmtl.train.loop import Trainer, train

CUT = ("data.rare_positive_fraction=0.5", "data.rare_findings=[Effusion,Hernia]")


def test_trainer_masks_training_positives_only_and_records_the_cut(tiny_nih: Path, tiny_cache: Path,
                                                                   tmp_path: Path) -> None:
    cfg = tiny_config(*CUT, "tasks.pos_weight=true", "tasks.specs=[findings, abnormal]")
    trainer = Trainer(cfg, data_root=tiny_nih, out=tmp_path / "run", cache_dir=tiny_cache)
    samples = trainer.train_loader.samples
    record = json.loads((tmp_path / "run" / LABEL_CUT_FILE).read_text())
    assert record["fraction"] == 0.5 and record["seed"] == cfg.seed and record["split"] == "train"
    names = set(trainer.index.table["image"].to_numpy()[samples.index_rows])
    for finding in ("Effusion", "Hernia"):
        col = labels.FINDING_INDEX[finding]
        positive = samples.targets["findings"][:, col] > 0.5
        entry = record["findings"][finding]
        assert entry["positives"] == positive.sum() >= 2
        assert entry["kept"] == kept_count(int(positive.sum()), 0.5) == (samples.masks["findings"][:, col]
                                                                          & positive).sum()
        assert set(entry["kept_images"]) <= names
    assert samples.masks["findings"][:, labels.FINDING_INDEX["Cardiomegaly"]].all()
    # validation keeps every label
    assert trainer.val_loader.samples.masks["findings"].all() and trainer.val_loader.samples.cut == ()
    # pos_weight follows the labels training sees: neg / kept positives among the labelled
    col = labels.FINDING_INDEX["Effusion"]
    labelled = samples.masks["findings"][:, col]
    pos = (samples.targets["findings"][labelled, col] > 0.5).sum()
    expected = (labelled.sum() - pos) / pos
    assert trainer.tasks[0].pos_weight[col].item() == pytest.approx(expected)


def test_a_cut_run_says_so_and_cannot_be_resumed_with_other_labels(tiny_nih: Path, tiny_cache: Path,
                                                                   tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(*CUT, "train.max_steps=2"), data_root=tiny_nih, out=run, cache_dir=tiny_cache, device="cpu")
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert saved["rare_positive_fraction"] == 0.5 and saved["rare_findings"] == ["Effusion", "Hernia"]
    first = json.loads((run / LABEL_CUT_FILE).read_text())
    with pytest.raises(CheckpointError, match=r"data\.rare_positive_fraction"):
        train(tiny_config("data.rare_positive_fraction=0.25", "data.rare_findings=[Effusion,Hernia]",
                          "train.max_steps=3"), out=run, resume=True, device="cpu")
    train(tiny_config(*CUT, "train.max_steps=3"), out=run, resume=True, device="cpu")
    assert json.loads((run / LABEL_CUT_FILE).read_text()) == first  # the same seed draws the same labels


def test_a_run_with_every_label_has_no_cut_record(tiny_nih: Path, tiny_cache: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(), data_root=tiny_nih, out=tmp_path / "run", cache_dir=tiny_cache)
    assert not (tmp_path / "run" / LABEL_CUT_FILE).exists() and trainer.label_cut is None
    assert np.all(trainer.train_loader.samples.masks["findings"])
