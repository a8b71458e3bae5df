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
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise with_filename(exc, path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def with_filename(exc: OSError, path: str | Path) -> OSError:
    """``exc`` itself when it names a file, else the same error naming ``path``: a failed ``write()`` or ``close()``
    (a full disk, for example) carries no file name, and the CLI's one-line message should say which file it was."""
    if exc.filename is not None:
        return exc
    return OSError(exc.errno, exc.strerror, str(path))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` (newlines kept as given) to ``path`` atomically; return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, doc: object) -> Path:
    """Serialise ``doc`` as indented JSON (NaN/inf refused: use None) and write it atomically; return the path."""
    return atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def read_json_file(path: str | Path, *, error: type[CxrmtlError] = CxrmtlError) -> object | None:
    """The JSON document in ``path`` (what ``write_json_atomic`` wrote); None when the file does not exist;
    ``error`` naming the file when it cannot be read or parsed (the run records' one reader)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not readable JSON ({exc})") from None


# ---------------------------------------------------------------------------------------------------------------
# output folders and disk space, reported in one line a user can act on

_UNITS: tuple[str, ...] = ("B", "kB", "MB", "GB", "TB", "PB")


def format_bytes(count: float) -> str:
    """``count`` bytes in decimal units with three significant digits (what ``df -H`` shows): 950 B, 1.23 MB, 45.6 GB.

    Sizes of a few MB used to print as "0.01 GiB"; a user needs the figure in units that match its size.
    """
    value = float(count)
    for unit in _UNITS:
        if unit == "B" and abs(value) < 999.5:
            return f"{value:.0f} B"
        if abs(value) < 999.5 or unit == _UNITS[-1]:
            return f"{value:.3g} {unit}" if abs(value) < 999.5 else f"{value:.0f} {unit}"
        value /= 1000.0
    raise AssertionError("unreachable")  # the loop returns at the last unit


def free_space_note(path: str | Path) -> str:
    """`` (X free on its file system)`` for the nearest existing folder of ``path``; empty when unknowable."""
    import shutil

    folder = _existing_ancestor(Path(path))
    try:
        return f" ({format_bytes(shutil.disk_usage(folder).free)} free on its file system)"
    except OSError:
        return ""


def no_space_message(path: str | Path, *, needed: int, free: int | None = None) -> str:
    """One line for a write that does not fit: the path, what it needs and what is free, in readable units."""
    if free is None:
        import shutil

        try:
            free = shutil.disk_usage(_existing_ancestor(Path(path))).free
        except OSError:
            free = None
    have = f", {format_bytes(free)} free" if free is not None else ""
    return f"{path}: no space left on device (needs about {format_bytes(needed)}{have})"


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself or its nearest existing ancestor (the folder a new path would be created in)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def ensure_writable_dir(path: str | Path, what: str) -> Path:
    """Check that ``path`` is, or can be created as, a folder this process can write into; return it.

    Nothing is created: the nearest existing ancestor is probed by creating and removing a temporary file in it (the
    only test that also sees read-only mounts and ACLs; ``os.access`` says yes to root on a read-only file system).
    Raises OutputError naming ``what`` (e.g. "--out") and the path when a part of the path is a file, the folder is
    not writable, or the file system is read-only or full, so a command fails in one line before doing any work.
    """
    from cxrmtl.errors import OutputError

    path = Path(path)
    base = _existing_ancestor(path)
    if not base.is_dir():
        part = "is a file, not a folder" if base == Path(os.path.abspath(path)) else f"{base} is a file, not a folder"
        raise OutputError(f"{what} {path}: {part}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".cxrmtl-write-test.", dir=base)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = "" if base == Path(os.path.abspath(path)) else f" (in {base})"
        raise OutputError(f"{what} {path}: cannot write there{where}: {reason}") from exc
    os.close(fd)
    os.unlink(probe)
    return path


# ---------------------------------------------------------------------------------------------------------------
# one advisory lock for cache builds and training runs


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
