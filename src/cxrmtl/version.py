"""Code version recorded in caches and runs: package version plus the git commit when available."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from cxrmtl import __version__


@functools.cache
def code_version() -> str:
    """Return e.g. ``0.1.0+g1a2b3c4`` (``-dirty`` appended for uncommitted changes), or the bare version."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True,
            timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}{'-dirty' if dirty else ''}" if sha else __version__
