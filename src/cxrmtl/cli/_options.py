"""Options several commands share, spelled, typed and validated the same way everywhere.

Choice options are ``Literal`` types, so typer lists the values in ``--help`` and refuses anything else with a
one-line usage error. The values come from the library's registries where those are cheap to import (``labels``);
where importing the owner would load torch or pandas on every ``--help`` (the device names in
``cxrmtl.distributed``, the data kinds in ``cxrmtl.eval.datakind`` (numpy), the weighting registry in
``cxrmtl.train.weighting``) the list is written here and ``tests/cli/test_cli_options.py`` keeps it equal to the
registry.
"""

from __future__ import annotations

from typing import Any, Literal

import typer

from cxrmtl import labels

Device = Literal["auto", "cpu", "cuda"]  # == cxrmtl.distributed.DEVICES
Checkpoint = Literal["best", "last"]  # == cxrmtl.runs.checkpoint: the two files a run keeps
Split = Literal[labels.SPLITS]  # type: ignore[valid-type]
EvalSplit = Literal["test", "val"]  # evaluate: thresholds are fitted on val, so train is never a report split
DataKind = Literal["auto", "nih", "phantom", "subset"]  # == cxrmtl.eval.datakind.DATA_KINDS
Prevalence = Literal[labels.PHANTOM_PREVALENCE_MODES]  # type: ignore[valid-type]
ALL = "all"  # --weightings all


def device_option() -> Any:
    """``--device auto|cpu|cuda`` (default auto: CUDA when a GPU is visible, else the CPU)."""
    return typer.Option("auto", "--device", help="auto (CUDA when a GPU is visible, else CPU), cpu or cuda.")


def checkpoint_option() -> Any:
    return typer.Option("best", "--checkpoint", help="Checkpoint of the run to use.")


def progress_option(default: bool | None = True, *, what: str = "the progress bar") -> Any:
    """``--progress/--no-progress``, the one progress switch of every command that has a bar."""
    note = " (default: the config's train.progress)" if default is None else ""
    return typer.Option(default, "--progress/--no-progress", help=f"Show {what}{note}.")


def resolve_device_name(name: str) -> str:
    """Resolve ``--device`` once at the start of a command (torch imported here) and return ``cpu`` or ``cuda``.

    ``cuda`` without a GPU fails here in one line, before any data is read or any folder is written.
    """
    from cxrmtl.distributed import resolve_device

    return resolve_device(name).type
