"""Crash-safe file writes: one implementation for caches, runs, checkpoints, reports and the phantom.

A reader (or a process restarted after SIGKILL) sees either the old file or the whole new one, never a torn one:
write a temporary file in the same folder, fsync it, rename it over the target, fsync the folder (POSIX needs the
folder fsync'd for the rename itself to survive a power loss). Also the one advisory lock (``exclusive_lock``) that
cache builds and training runs take on their folder, and byte counts in units a user can read (``format_bytes``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cxrmtl.errors import CxrmtlError


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


def format_bytes(count: float) -> str:
    """A byte count in the largest binary unit that keeps it >= 1, three significant figures ("85.3 MiB").

    Why: a full-disk message that rounds both the need and the free space to "0.01 GiB" tells the user nothing.
    """
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the filesystem holding ``path`` (its nearest existing parent); None when it cannot be asked."""
    import shutil

    path = Path(path)
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


@contextlib.contextmanager
def exclusive_lock(path: str | Path, *, what: str, error: type[Exception] = CxrmtlError) -> Iterator[None]:
    """Hold an advisory lock on the file ``path`` for the block; refuse at once while another process holds it.

    The holder writes its pid, host and start time into the file, so the refusal says who holds it:
    ``error("<what> is in use by pid N (host H) since T")``. The OS drops the lock when the holder exits or is
    killed (even SIGKILL), so a stale file never blocks anyone; the file itself is left in place (removing a lock
    file races with the next taker). Where ``fcntl`` is missing (not POSIX) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise error(f"{what} is in use by {_lock_holder(fd)}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder_record()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released: no stale holder for a reader to quote
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _holder_record() -> dict[str, object]:
    import datetime
    import socket

    since = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": since}


def _lock_holder(fd: int) -> str:
    """"pid N (host H) since T" from the lock file, or a vaguer phrase while the holder has not written it yet."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"pid {int(record['pid'])} (host {record['host']}) since {record['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
