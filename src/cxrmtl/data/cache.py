"""The preprocessing cache: every image of an index decoded once, resized, stored as one uint8 memmap.

Why: decoding a 1024x1024 PNG costs ~10 ms; a training epoch over 112,120 images would spend most of its time in
the decoder. The cache pays that once; the loader then reads batches with one fancy-index read.

Layout of ``OUT/`` (docs/cache.md, docs/architecture.md):

- ``images.u8``   raw uint8, shape (N, S, S), C order; row i is image ``names.txt`` line i.
- ``names.txt``   row -> image name, one per line.
- ``manifest.json`` source root, size, code version, per-row status ("ok" or the read error) and checksums.
  Written last and atomically: its presence means the build finished.

While building, ``build.json`` (the fixed plan: rows, chunking, size, source) and ``journal.jsonl`` (one line per
finished chunk, appended only after the chunk's pixels were fsync'd) make a killed build resumable: a rerun trusts
only journaled chunks and redoes the rest, so the result is byte-identical to an uninterrupted build.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrmtl import labels
from cxrmtl.errors import CacheError, CxrmtlError
from cxrmtl.fsio import atomic_write_text, exclusive_lock, no_space_message

if TYPE_CHECKING:
    from cxrmtl.data.nih import NIHIndex

# Bump whenever the stored pixels would change (decoder, crop, interpolation): older caches are then refused.
FORMAT_VERSION = 1
IMAGES_FILE = "images.u8"
NAMES_FILE = "names.txt"
MANIFEST_FILE = "manifest.json"
PLAN_FILE = "build.json"
JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = ".build.lock"  # advisory flock; left in place (removing a lock file races with the next taker)
OWN_FILES = (IMAGES_FILE, NAMES_FILE, MANIFEST_FILE, PLAN_FILE, JOURNAL_FILE)
STATUS_OK = "ok"
_Result = tuple[int, list[str], list[str]]  # (chunk, per-image status, per-image checksum)
CHECKSUM_ALGO = "blake2b-128"


# --------------------------------------------------------------------------------------------------------------
# Preprocessing: one function shared by the cache and by inference on arbitrary images.
# --------------------------------------------------------------------------------------------------------------


def square_crop_box(width: int, height: int) -> tuple[int, int, int]:
    """Return ``(x0, y0, side)`` of the centred square crop taken from a ``width`` x ``height`` image.

    Why centre-crop: CheXNet reimplementations (torchvision ``Resize`` + ``CenterCrop``) and torchxrayvision's
    ``XRayCenterCrop`` crop the centre; NIH images are 1024x1024 so nothing is lost there. A box (x, y) in the
    original image maps to ``((x - x0) * S / side, (y - y0) * S / side)`` in the cache.
    """
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def preprocess(image: np.ndarray, *, size: int) -> np.ndarray:
    """Turn a decoded grayscale image (uint8 or uint16, 2-D) into the cache's ``size`` x ``size`` uint8 square.

    16-bit images are scaled to 8 bits (``imageio.to_uint8``), the centre square is kept (``square_crop_box``),
    then area interpolation (cv2.INTER_AREA, the anti-aliased choice for downscaling) resizes it.
    """
    import cv2

    from cxrmtl.data.imageio import to_uint8

    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = to_uint8(image)
    height, width = image.shape
    x0, y0, side = square_crop_box(width, height)
    square = image[y0 : y0 + side, x0 : x0 + side]
    if side == size:
        return np.ascontiguousarray(square)
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


def row_checksum(row: np.ndarray) -> str:
    """Checksum of one cache row (blake2b, 16-byte digest: fast, and collisions are not a concern here)."""
    return hashlib.blake2b(memoryview(np.ascontiguousarray(row)).cast("B"), digest_size=16).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Reports and the read-only view.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheReport:
    """What a build did: counts, the unreadable images with their reasons, and speed."""

    out: Path
    size: int
    count: int
    ok: int
    failed: dict[str, str]
    missing: int
    resumed: int
    processed: int
    seconds: float
    skipped: bool = False

    @property
    def images_per_second(self) -> float:
        """Images decoded per second in this run (0 for a no-op rerun)."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of re-hashing every row: the (row, name) pairs whose bytes no longer match the manifest.

    Layout problems (missing or truncated files) raise CacheError from ``open_cache`` instead."""

    out: Path
    count: int
    mismatched: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every row matches its checksum."""
        return not self.mismatched


@dataclass(frozen=True, eq=False)
class CacheView:
    """A finished cache opened read-only: ``images[row]`` is an S x S uint8 image, ``ok[row]`` says it is real data."""

    out: Path
    images: np.memmap
    names: np.ndarray
    ok: np.ndarray
    size: int
    manifest: dict[str, Any]

    def __len__(self) -> int:
        return len(self.names)

    def rows_for(self, names: Iterable[str]) -> np.ndarray:
        """Cache rows of ``names`` (int64); -1 where a name is absent from the cache or its image was unreadable."""
        lookup = self._lookup()
        return np.fromiter((lookup.get(str(n), -1) for n in names), dtype=np.int64)

    def _lookup(self) -> dict[str, int]:
        cached = self.__dict__.get("_lookup_cache")
        if cached is None:
            good = np.flatnonzero(self.ok)
            cached = dict(zip(self.names[good].tolist(), good.tolist(), strict=True))
            object.__setattr__(self, "_lookup_cache", cached)
        return cached


# --------------------------------------------------------------------------------------------------------------
# Small file helpers: atomic writes and the journal.
# --------------------------------------------------------------------------------------------------------------


def _journal_line(chunk: int, status: list[str], checksums: list[str]) -> str:
    body = json.dumps({"chunk": chunk, "status": status, "checksum": checksums}, separators=(",", ":"))
    return f"{zlib.crc32(body.encode()):08x} {body}\n"


def _read_journal(path: Path, chunk_lengths: Sequence[int]) -> tuple[dict[int, tuple[list[str], list[str]]], int]:
    """Parse the journal; return the trusted chunks and the byte length of the trusted prefix.

    A line counts only if it is complete (ends in a newline), its CRC matches and its chunk fits the plan; the first
    bad line ends the trusted prefix (a SIGKILL can tear the last line; nothing after it was ever appended).
    """
    done: dict[int, tuple[list[str], list[str]]] = {}
    good_bytes = 0
    if not path.is_file():
        return done, 0
    with open(path, "rb") as fh:
        for raw in fh:
            record = _parse_journal_line(raw, chunk_lengths)
            if record is None:
                break
            done[record[0]] = (record[1], record[2])
            good_bytes += len(raw)
    return done, good_bytes


def _parse_journal_line(raw: bytes, chunk_lengths: Sequence[int]) -> _Result | None:
    if not raw.endswith(b"\n") or len(raw) < 10:
        return None
    crc, _, body = raw[:-1].partition(b" ")
    try:
        if int(crc, 16) != zlib.crc32(body):
            return None
        record = json.loads(body)
        chunk, status, checksums = int(record["chunk"]), record["status"], record["checksum"]
    except (ValueError, KeyError, TypeError):
        return None
    if not 0 <= chunk < len(chunk_lengths) or not len(status) == len(checksums) == chunk_lengths[chunk]:
        return None
    return chunk, [str(s) for s in status], [str(c) for c in checksums]


# --------------------------------------------------------------------------------------------------------------
# The worker side: decode a chunk of images and write their rows straight into images.u8 (no pixels over pipes).
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    chunk: int
    start: int
    paths: tuple[str, ...]


def _worker_init() -> None:
    """Per-process setup: one cv2 thread (the pool is the parallelism), Ctrl-C left to the parent (it stops the
    pool; the journal stays consistent), and death with the parent (Linux) so a killed build leaves no writer."""
    import cv2

    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            pr_set_pdeathsig = 1  # prctl(2): deliver a signal to this process when its parent dies
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _decode_one(path: str, size: int) -> tuple[np.ndarray, str]:
    """Decode and preprocess one image; an unreadable one becomes a zero row plus its reason, never an exception."""
    from cxrmtl.data.imageio import read_gray

    try:
        return preprocess(read_gray(path), size=size), STATUS_OK
    except CxrmtlError as exc:
        reason = str(exc)
    except Exception as exc:  # a corrupt file must not stop a 112k-image build; the reason is recorded
        reason = f"{path}: {type(exc).__name__}: {exc}"
    return np.zeros((size, size), dtype=np.uint8), f"error: {reason}"


def _run_job(job: _Job, images_path: str, size: int) -> _Result:
    fd = os.open(images_path, os.O_WRONLY)
    status: list[str] = []
    checksums: list[str] = []
    try:
        for offset, path in enumerate(job.paths):
            row, state = _decode_one(path, size)
            os.pwrite(fd, row.tobytes(), (job.start + offset) * size * size)
            status.append(state)
            checksums.append(row_checksum(row))
    finally:
        os.close(fd)
    return job.chunk, status, checksums


def _run_job_star(args: tuple[_Job, str, int]) -> _Result:
    return _run_job(*args)


# --------------------------------------------------------------------------------------------------------------
# The plan: which images go to which rows, fixed before the first pixel is written.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    source_root: str
    size: int
    names: tuple[str, ...]
    paths: tuple[str, ...]
    missing: int
    chunk_size: int
    code_version: str

    @property
    def names_digest(self) -> str:
        return hashlib.sha256("\n".join(self.names).encode()).hexdigest()

    def chunk_lengths(self) -> list[int]:
        n = len(self.names)
        return [min(self.chunk_size, n - s) for s in range(0, n, self.chunk_size)]

    def identity(self) -> dict[str, Any]:
        """The fields that must match for a rerun to continue or reuse a build."""
        return {"source_root": self.source_root, "size": self.size, "count": len(self.names),
                "names_sha256": self.names_digest}

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT_VERSION, **self.identity(), "chunk_size": self.chunk_size,
                           "code_version": self.code_version}, indent=1, sort_keys=True)


def _make_plan(index: NIHIndex, *, size: int, chunk_size: int | None, workers: int) -> _Plan:
    from cxrmtl.version import code_version

    root = Path(index.root).resolve()
    table = index.table
    present = table["path"].astype(str).to_numpy() != ""
    names = tuple(str(n) for n in table["image"].to_numpy()[present])
    paths = tuple(str(p if Path(p).is_absolute() else root / p) for p in table["path"].to_numpy()[present])
    bad = next((n for n in names if not n or "\n" in n or "\r" in n), None)
    if bad is not None:
        raise CacheError(f"{root}: image name {bad!r} cannot be stored in {NAMES_FILE}")
    if len(set(names)) != len(names):
        raise CacheError(f"{root}: the index lists some image names twice; a cache row needs a unique name")
    if not names:
        raise CacheError(f"{root}: none of the {len(table)} indexed images exists; nothing to cache")
    chunk = chunk_size or _default_chunk(len(names), workers)
    return _Plan(str(root), size, names, paths, int((~present).sum()), chunk, code_version())


def _check_size(size: int) -> None:
    low, high = labels.CACHE_MIN_SIZE, labels.CACHE_MAX_SIZE
    if not isinstance(size, int) or isinstance(size, bool) or not low <= size <= high:
        raise CacheError(f"--size: {size!r} is not an integer in [{low}, {high}]")


def _default_chunk(count: int, workers: int) -> int:
    """Chunks small enough to balance the workers and to lose little on a kill, large enough to amortise fsync."""
    return max(1, min(labels.CACHE_MAX_CHUNK, -(-count // (workers * 8))))


# --------------------------------------------------------------------------------------------------------------
# build_cache and its steps.
# --------------------------------------------------------------------------------------------------------------


def build_cache(
    index: NIHIndex,
    out: Path,
    *,
    size: int,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
    chunk_size: int | None = None,
    sync_seconds: float = labels.CACHE_SYNC_SECONDS,
) -> CacheReport:
    """Decode every existing image of ``index`` once into ``out`` (resumable; a finished cache is a no-op).

    ``workers`` processes decode in parallel (default: all cores). ``force`` discards an incompatible or partial
    cache in ``out`` instead of refusing. ``chunk_size`` (images per journal record) and ``sync_seconds`` (how
    often finished chunks are fsync'd and journaled) only trade speed against the work redone after a kill.
    """
    started = time.perf_counter()
    _check_size(size)
    workers = _check_workers(workers)
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise CacheError(f"--chunk: {chunk_size!r} must be an integer >= 1")
    if not sync_seconds >= 0:
        raise CacheError(f"--sync-every: {sync_seconds!r} must be >= 0 seconds")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CacheError(f"{out}: exists and is not a directory")
    plan = _make_plan(index, size=size, chunk_size=chunk_size, workers=workers)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out / LOCK_FILE, what=str(out), error=CacheError):  # two builds never write one cache
        return _build_locked(out, plan, workers=workers, progress=progress, force=force, sync_seconds=sync_seconds,
                             started=started)


def _build_locked(
    out: Path, plan: _Plan, *, workers: int, progress: bool, force: bool, sync_seconds: float, started: float
) -> CacheReport:
    if force:
        _remove_own_files(out)
    finished = _finished_report(out, plan, started)
    if finished is not None:
        return finished
    plan = _start_or_resume(out, plan)
    done, good_bytes = _read_journal(out / JOURNAL_FILE, plan.chunk_lengths())
    _truncate(out / JOURNAL_FILE, good_bytes)
    resumed = sum(len(v[0]) for v in done.values())
    _decode_missing_chunks(out, plan, done, workers=workers, progress=progress, resumed=resumed,
                           sync_seconds=sync_seconds)
    manifest = _write_manifest(out, plan, done)
    return _report(out, plan, manifest, resumed=resumed, started=started)


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return max(1, os.cpu_count() or 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise CacheError(f"--workers: {workers!r} must be an integer >= 1")
    return workers


def _remove_own_files(out: Path) -> None:
    for name in OWN_FILES:
        (out / name).unlink(missing_ok=True)


def _truncate(path: Path, length: int) -> None:
    if path.is_file() and path.stat().st_size != length:
        with open(path, "r+b") as fh:
            fh.truncate(length)
            fh.flush()
            os.fsync(fh.fileno())


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"{path}: unreadable ({exc}); rebuild with --force") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        raise CacheError(f"{path}: not a cxrmtl cache file of format {FORMAT_VERSION}; rebuild with --force")
    return data


def _mismatch(recorded: dict[str, Any], plan: _Plan, path: Path) -> str | None:
    """Describe the first identity field where ``recorded`` differs from the plan, or None."""
    identity = plan.identity()
    for key in ("source_root", "size"):
        if recorded.get(key) != identity[key]:
            return f"{path}: was built with {key} {recorded.get(key)!r}, this run asks for {identity[key]!r}"
    if recorded.get("names_sha256") != identity["names_sha256"] or recorded.get("count") != identity["count"]:
        return (f"{path}: was built from a different image list ({recorded.get('count')} images; the index now has "
                f"{identity['count']} image files)")
    return None


def _finished_report(out: Path, plan: _Plan, started: float) -> CacheReport | None:
    """Return a no-op report if ``out`` already holds this exact finished cache; refuse a different one."""
    path = out / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = _load_json(path)
    problem = _mismatch(manifest, plan, path)
    if problem:
        raise CacheError(f"{problem}; use another OUT or --force to rebuild")
    (out / JOURNAL_FILE).unlink(missing_ok=True)  # leftovers of a run killed right after the manifest was written
    (out / PLAN_FILE).unlink(missing_ok=True)
    report = _report(out, plan, manifest, resumed=len(plan.names), started=started)
    return CacheReport(**{**report.__dict__, "processed": 0, "skipped": True})


@dataclass(frozen=True)
class CacheStatus:
    """Whether ``out`` can serve an index as it stands: ``ready``, ``missing`` (nothing built), ``partial`` (an
    interrupted build that ``build_cache`` resumes) or ``conflict`` (a different cache: rebuilding would destroy it).
    ``reason`` says why in a phrase that names the folder."""

    state: str
    reason: str


def cache_status(index: NIHIndex, out: Path, *, size: int) -> CacheStatus:
    """Look at ``out`` without writing anything: may it be opened for ``index`` at ``size``, built, or neither?"""
    out = Path(out)
    plan = _make_plan(index, size=size, chunk_size=None, workers=1)
    if out.exists() and not out.is_dir():
        return CacheStatus("conflict", f"{out}: exists and is not a directory")
    for name, state in ((MANIFEST_FILE, "ready"), (PLAN_FILE, "partial")):
        path = out / name
        if path.is_file():
            try:
                problem = _mismatch(_load_json(path), plan, path)
            except CacheError as exc:
                return CacheStatus("conflict", str(exc))
            if problem:
                return CacheStatus("conflict", problem)
            reason = "ready" if state == "ready" else f"{out}: holds an interrupted build"
            return CacheStatus(state, reason)
    return CacheStatus("missing", f"{out}: no cache there yet")


def _start_or_resume(out: Path, plan: _Plan) -> _Plan:
    """Continue the partial build in ``out`` (same identity and format), or lay out a fresh one."""
    plan_path = out / PLAN_FILE
    if plan_path.is_file():
        recorded = _load_json(plan_path)
        problem = _mismatch(recorded, plan, plan_path)
        # Pixels depend on FORMAT_VERSION (bumped whenever preprocessing changes), not on the git state: a commit
        # between a kill and the rerun must not throw away a partial build.
        if problem:
            raise CacheError(f"{problem}; use --force to discard the partial build")
        chunk = recorded.get("chunk_size")
        if not isinstance(chunk, int) or chunk < 1:
            raise CacheError(f"{plan_path}: chunk_size {chunk!r} is not an integer >= 1; use --force to start again")
        resumed = _Plan(**{**plan.__dict__, "chunk_size": chunk})
        _check_images_file(out, resumed)
        return resumed
    (out / JOURNAL_FILE).unlink(missing_ok=True)  # no plan means nothing was ever trusted
    _allocate(out, plan)
    atomic_write_text(out / NAMES_FILE, "".join(f"{n}\n" for n in plan.names))
    atomic_write_text(plan_path, plan.to_json())
    return plan


def _check_images_file(out: Path, plan: _Plan) -> None:
    path = out / IMAGES_FILE
    expected = len(plan.names) * plan.size * plan.size
    actual = path.stat().st_size if path.is_file() else -1
    if actual != expected:
        raise CacheError(f"{path}: {actual} bytes, the build plan needs {expected}; use --force to start again")


def _allocate(out: Path, plan: _Plan) -> None:
    """Preallocate images.u8, refusing up front when the disk cannot hold it.

    ``posix_fallocate`` reserves the blocks, so a disk filling up later cannot fail the build half-way; where the
    filesystem does not support it the file stays sparse (zeros until written).
    """
    path = out / IMAGES_FILE
    needed = len(plan.names) * plan.size * plan.size
    free = shutil.disk_usage(out).free
    if needed > free:
        raise CacheError(no_space_message(path, needed=needed, free=free))
    with open(path, "wb") as fh:
        fh.truncate(needed)
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fh.fileno(), 0, needed)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise CacheError(no_space_message(path, needed=needed)) from None
        fh.flush()
        os.fsync(fh.fileno())


def _jobs(plan: _Plan, done: dict[int, Any]) -> list[_Job]:
    jobs = []
    for chunk, start in enumerate(range(0, len(plan.names), plan.chunk_size)):
        if chunk not in done:
            jobs.append(_Job(chunk, start, plan.paths[start : start + plan.chunk_size]))
    return jobs


def _decode_missing_chunks(
    out: Path,
    plan: _Plan,
    done: dict[int, tuple[list[str], list[str]]],
    *,
    workers: int,
    progress: bool,
    resumed: int,
    sync_seconds: float,
) -> None:
    """Decode every chunk not yet journaled; journal each one only after its pixels are on disk."""
    jobs = _jobs(plan, done)
    if not jobs:
        return
    from tqdm import tqdm

    bar = tqdm(total=len(plan.names), initial=resumed, unit="img", desc="cache", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    images_path = str(out / IMAGES_FILE)
    data_fd = os.open(images_path, os.O_RDONLY)
    journal = open(out / JOURNAL_FILE, "ab")  # noqa: SIM115 - closed in the finally below
    pending: list[_Result] = []
    last_sync = time.monotonic()
    try:
        for result in _safe_results(jobs, images_path, plan.size, workers):
            pending.append(result)
            bar.update(len(result[1]))
            if time.monotonic() - last_sync >= sync_seconds:
                _commit(pending, data_fd, journal, done)
                last_sync = time.monotonic()
        _commit(pending, data_fd, journal, done)
    finally:
        bar.close()
        journal.close()
        os.close(data_fd)


def _safe_results(jobs: list[_Job], images_path: str, size: int, workers: int) -> Iterator[_Result]:
    """``_results`` with I/O failures (disk full, folder removed) turned into a CacheError that says how to go on."""
    try:
        yield from _results(jobs, images_path, size, workers)
    except OSError as exc:
        raise CacheError(f"{images_path}: writing failed ({exc}); fix the cause and rerun to resume") from exc


def _results(jobs: list[_Job], images_path: str, size: int, workers: int) -> Iterator[_Result]:
    """Run the jobs in this process (one worker) or in a process pool (``_start_method``), yielding as they end."""
    if workers == 1 or len(jobs) == 1:
        _worker_init_local()
        for job in jobs:
            yield _run_job(job, images_path, size)
        return
    context = multiprocessing.get_context(_start_method())
    with context.Pool(min(workers, len(jobs)), initializer=_worker_init) as pool:
        yield from pool.imap_unordered(_run_job_star, [(job, images_path, size) for job in jobs])


def _start_method() -> str:
    """fork where the OS has it: workers start in milliseconds and need no ``__main__`` guard in user scripts.

    Fork is safe here although the parent may hold torch/OpenMP threads: a worker touches only numpy, hashlib, os
    and OpenCV, and ``_worker_init`` pins OpenCV to one thread, so no inherited thread pool or lock is ever used
    (the same reasoning as torch's DataLoader, which forks on Linux). Elsewhere: spawn.
    """
    methods = multiprocessing.get_all_start_methods()
    if "torch" in sys.modules and "forkserver" in methods:
        # Inside a training process (torch loaded, its thread pools live) a forked pool was once seen to leave a
        # worker that never exited; a fork server is forked from a clean single-threaded process instead.
        return "forkserver"
    return "fork" if "fork" in methods else "spawn"


def _worker_init_local() -> None:
    import cv2

    cv2.setNumThreads(1)


def _commit(pending: list[_Result], data_fd: int, journal: Any, done: dict) -> None:
    """fsync the pixels, then append and fsync the journal lines of the finished chunks (the order matters)."""
    if not pending:
        return
    os.fsync(data_fd)
    journal.write("".join(_journal_line(c, s, h) for c, s, h in pending).encode())
    journal.flush()
    os.fsync(journal.fileno())
    for chunk, status, checksums in pending:
        done[chunk] = (status, checksums)
    pending.clear()


def _write_manifest(out: Path, plan: _Plan, done: dict[int, tuple[list[str], list[str]]]) -> dict[str, Any]:
    """Write manifest.json atomically (the build is finished from that moment), then drop the plan and journal."""
    status: list[str] = []
    checksums: list[str] = []
    for chunk in range(len(plan.chunk_lengths())):
        status.extend(done[chunk][0])
        checksums.extend(done[chunk][1])
    manifest = {
        "format": FORMAT_VERSION,
        **plan.identity(),
        "code_version": plan.code_version,
        "images": {"file": IMAGES_FILE, "dtype": "uint8", "shape": [len(plan.names), plan.size, plan.size]},
        "preprocess": {"square": "centre-crop", "resize": "cv2.INTER_AREA", "bit_depth": "to_uint8 full range"},
        "missing": plan.missing,
        "checksum_algorithm": CHECKSUM_ALGO,
        "status": status,
        "checksum": checksums,
    }
    atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")
    (out / JOURNAL_FILE).unlink(missing_ok=True)
    (out / PLAN_FILE).unlink(missing_ok=True)
    return manifest


def _report(out: Path, plan: _Plan, manifest: dict[str, Any], *, resumed: int, started: float) -> CacheReport:
    status = manifest["status"]
    failed = {name: s.removeprefix("error: ") for name, s in zip(plan.names, status, strict=True) if s != STATUS_OK}
    return CacheReport(out=out, size=plan.size, count=len(plan.names), ok=len(status) - len(failed), failed=failed,
                       missing=plan.missing, resumed=resumed, processed=len(plan.names) - resumed,
                       seconds=time.perf_counter() - started)


# --------------------------------------------------------------------------------------------------------------
# Opening and verifying a finished cache.
# --------------------------------------------------------------------------------------------------------------


def _read_manifest(out: Path) -> dict[str, Any]:
    path = Path(out) / MANIFEST_FILE
    if not path.is_file():
        hint = " (a build is in progress or was interrupted: rerun cxrmtl cache build)" if (
            Path(out) / PLAN_FILE).is_file() else ""
        raise CacheError(f"{path}: missing; {out} is not a finished cache{hint}")
    manifest = _load_json(path)
    try:
        n, s1, s2 = (int(v) for v in manifest["images"]["shape"])
        ok_layout = n == len(manifest["status"]) == len(manifest["checksum"]) == int(manifest["count"]) and s1 == s2
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"{path}: malformed manifest ({exc!r})") from exc
    if not ok_layout:
        raise CacheError(f"{path}: shape, status and checksum lists disagree")
    return manifest


def _read_names(out: Path, count: int) -> np.ndarray:
    path = Path(out) / NAMES_FILE
    try:
        names = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise CacheError(f"{path}: unreadable ({exc})") from exc
    if names[-1] != "" or len(names) - 1 != count:
        raise CacheError(f"{path}: {len(names) - 1} lines, the manifest records {count} rows")
    return np.array(names[:-1], dtype=str)


def open_cache(out: Path) -> CacheView:
    """Open a finished cache read-only; refuses an unfinished, truncated or inconsistent one with a CacheError."""
    out = Path(out)
    manifest = _read_manifest(out)
    count, size = int(manifest["count"]), int(manifest["size"])
    names = _read_names(out, count)
    path = out / IMAGES_FILE
    expected = count * size * size
    actual = path.stat().st_size if path.is_file() else -1
    if actual != expected:
        raise CacheError(f"{path}: {actual} bytes, the manifest records {count} x {size} x {size} = {expected}")
    images = np.memmap(path, dtype=np.uint8, mode="r", shape=(count, size, size))
    ok = np.array([s == STATUS_OK for s in manifest["status"]], dtype=bool)
    return CacheView(out=out, images=images, names=names, ok=ok, size=size, manifest=manifest)


def verify_cache(out: Path, *, on_progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Re-hash every row of a finished cache and compare with the manifest's checksums."""
    view = open_cache(out)
    expected = view.manifest["checksum"]
    mismatched: list[tuple[int, str]] = []
    step = max(1, labels.CACHE_VERIFY_BYTES // (view.size * view.size))
    for start in range(0, len(view), step):
        block = np.asarray(view.images[start : start + step])
        for offset, row in enumerate(block):
            if row_checksum(row) != expected[start + offset]:
                mismatched.append((start + offset, str(view.names[start + offset])))
        if on_progress is not None:
            on_progress(len(block))
    return VerifyReport(out=Path(out), count=len(view), mismatched=mismatched)
