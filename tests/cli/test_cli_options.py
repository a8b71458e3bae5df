"""The shared CLI options list exactly what the library accepts, and ``--device`` means one thing everywhere."""

from __future__ import annotations

import typing

import pytest
import torch

from cxrmtl import labels
from cxrmtl.cli import _options
from cxrmtl.cli.ablate import WEIGHTING_CHOICES
from cxrmtl.distributed import DEVICES, resolve_device
from cxrmtl.errors import ConfigError


def choices(alias: object) -> tuple[str, ...]:
    return typing.get_args(alias)


def test_choice_lists_match_the_library_registries() -> None:
    from cxrmtl.ablate.ablation import COMPARE_SPLITS
    from cxrmtl.eval.datakind import DATA_KINDS
    from cxrmtl.runs.checkpoint import WHICH_CHECKPOINTS
    from cxrmtl.train.weighting import WEIGHTINGS

    assert choices(_options.Device) == DEVICES
    assert choices(_options.Checkpoint) == tuple(WHICH_CHECKPOINTS)
    assert choices(_options.DataKind) == DATA_KINDS
    assert choices(_options.Prevalence) == labels.PHANTOM_PREVALENCE_MODES
    assert choices(_options.Split) == labels.SPLITS
    assert set(choices(_options.EvalSplit)) == set(COMPARE_SPLITS) and set(COMPARE_SPLITS) <= set(labels.SPLITS)
    assert set(WEIGHTING_CHOICES) - {_options.ALL} <= set(WEIGHTINGS)


def test_auto_is_cuda_exactly_when_a_gpu_is_visible() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert _options.resolve_device_name("auto") == expected


@pytest.mark.parametrize("name", ["gpu", "cpu:0", "", "CUDA"])
def test_unknown_device_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"--device: .* is not one of auto, cpu, cuda"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: cuda is valid here")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="--device: cuda requested but no CUDA GPU is available"):
        resolve_device("cuda")
