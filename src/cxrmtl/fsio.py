"""Crash-safe file writes: one implementation for caches, runs, checkpoints, reports and the phantom.

A reader (or a process restarted after SIGKILL) sees either the old file or the whole new one, never a torn one:
write a temporary file in the same folder, fsync it, rename it over the target, fsync the folder (POSIX needs the
folder fsync'd for the rename itself to survive a power loss).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Persist renames in the folder ``path``; a no-op where folders cannot be opened (e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (creating the parent folder); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` (newlines kept as given) to ``path`` atomically; return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, doc: object) -> Path:
    """Serialise ``doc`` as indented JSON (NaN/inf refused: use None) and write it atomically; return the path."""
    return atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
