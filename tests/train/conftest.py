"""Fixtures for the training-engine tests (helpers live in trainkit.py, importable by tests/infer too)."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainkit import write_tiny_nih


@pytest.fixture(scope="session")
def tiny_nih(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_nih(tmp_path_factory.mktemp("tiny_nih"))


@pytest.fixture(scope="session")
def tiny_cache(tiny_nih: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 32 px cache of ``tiny_nih`` built once per session (runs pass it with --cache)."""
    from cxrmtl.data.cache import build_cache
    from cxrmtl.data.nih import load_index

    out = tmp_path_factory.mktemp("tiny_cache") / "s32"
    build_cache(load_index(tiny_nih), out, size=32, workers=1, progress=False)
    return out


