"""Fetch the NIH ChestX-ray14 release into the layout ``load_index`` reads, resumably and verifiably.

``download_release(dest, options)`` fetches the 12 image archives (``cxrmtl.data.release``: the NIH addresses, or
the same names under ``options.mirror``) and the metadata files, then unpacks each archive into the flat
``DEST/images/``. What it guarantees, and why:

- **Resume, never restart from zero**: a transfer writes ``DEST/archives/NAME.part``; after a dropped connection,
  a kill or a reboot the next attempt asks for ``Range: bytes=<part size>-``. A server that ignores Range (answers
  200 with the whole file) is detected and the part is rewritten from the start, never appended to.
- **Retries with exponential back-off** for network failures and 408/429/5xx answers; other HTTP errors (404, 403)
  are reported at once, naming the address.
- **Bounded parallelism**: at most ``options.jobs`` archives are in flight (downloading or unpacking) at a time.
- **A free-disk check before anything is written**: sizes from the servers' Content-Length (HEAD), else the
  release's approximate sizes (``release.APPROX_ARCHIVE_BYTES``), plus the same again for unpacking.
- **A manifest** (``DEST/download_manifest.json``, written atomically after every change) records each completed
  file's size and SHA-256; a rerun re-hashes what it finds and fetches again what does not match. An archive is
  marked unpacked only after every member is written and flushed, together with its member list; a killed or failed
  unpack is redone on the next run, never taken as complete.
- **Safe unpacking**: ``tarfile.data_filter`` (the ``filter="data"`` policy: no absolute paths, no ``..``, no
  device files) and, stricter, no links at all and regular files only directly under ``images/``. Each member is
  written to a hidden temporary name and renamed, so a failure never leaves a truncated PNG under a real name.
- **Damage**: a gzip/tar error while unpacking means the archive is damaged; it is fetched again once, and a second
  damaged copy is reported with the address it came from.
- The official split lists are checked against their published md5 (``release.SPLIT_LIST_MD5``); a mismatch is
  reported (another split than the paper's), not fatal, since a mirror may serve a subset on purpose.

The NIH release serves its metadata only through its web page (no direct address is known): without a mirror, those
files are fetched by hand into DEST; the error says which and where. ``adopt_kaggle(source, dest)`` takes an
already-downloaded Kaggle copy instead. Only the standard library does the HTTP (urllib).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlparse

from cxrmtl import labels
from cxrmtl.data import release
from cxrmtl.errors import DownloadError
from cxrmtl.fsio import atomic_write_text, fsync_dir, write_json_atomic

log = logging.getLogger(__name__)

ONLY_CHOICES: tuple[str, ...] = ("all", "metadata", "images")
MANIFEST_NAME: str = "download_manifest.json"
MANIFEST_SCHEMA: int = 1
ARCHIVE_DIR: str = "archives"  # DEST/archives/images_0NN.tar.gz (kept: the manifest re-verifies them on a rerun)
STATE_DIR: str = ".download"  # DEST/.download/<archive>.members: name<TAB>size of every unpacked image
PART_SUFFIX: str = ".part"
CHUNK_BYTES: int = 1 << 20
# HTTP answers worth retrying: request timeout, too many requests, server-side failures.
RETRY_STATUS: frozenset[int] = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S: float = 60.0
HEAD_TIMEOUT_S: float = 15.0
PROBE_TIMEOUT_S: float = 10.0
# Kept free beyond the estimate: the index, the cache and the OS need room too.
DISK_MARGIN_BYTES: int = 1 << 30
MAX_JOBS: int = 12
DISK_FULL_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT})
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)


@dataclass(frozen=True)
class RemoteFile:
    """One file of the release: its name in DEST, its address (None when no direct one is known) and kind."""

    name: str
    url: str | None
    kind: str  # "archive" | "metadata"
    approx_bytes: int


@dataclass(frozen=True)
class DownloadOptions:
    """What to fetch and how (``cxrmtl download`` flags map one to one)."""

    only: str = "all"  # all | metadata | images
    mirror: str | None = None  # base URL serving the release's file names
    jobs: int = 3
    retries: int = 5  # per file, after the first attempt
    backoff_s: float = 1.0  # first wait; doubled per retry up to MAX_BACKOFF_S
    timeout_s: float = 60.0  # socket timeout of one request
    progress: bool = False


@dataclass
class DownloadReport:
    """What ``download_release`` did; every list holds release file names."""

    dest: Path
    downloaded: list[str] = field(default_factory=list)  # transferred (fully or partly) this time
    resumed: list[str] = field(default_factory=list)  # continued from a .part with a Range request
    refetched: list[str] = field(default_factory=list)  # damaged or changed on disk, fetched again
    skipped: list[str] = field(default_factory=list)  # complete and verified, nothing to do
    extracted: list[str] = field(default_factory=list)  # archives unpacked this time
    missing_metadata: list[str] = field(default_factory=list)  # no address known and not in DEST
    notes: list[str] = field(default_factory=list)  # things the user should read (md5 mismatch, ...)
    bytes_transferred: int = 0
    images: int = 0  # PNGs listed by the member lists of the complete archives
    seconds: float = 0.0


def missing_metadata_message(names: list[str], dest: Path) -> str:
    """What to do about metadata files that have no known address and are not in DEST (one line)."""
    return (f"{', '.join(names)}: not in {dest}; the NIH release serves the metadata files only from its web page "
            f"{release.RELEASE_PAGE} (no direct address is known): download them there by hand into {dest} (or pass "
            "--mirror URL or --kaggle DIR) and rerun")


def plan_files(*, only: str = "all", mirror: str | None = None) -> list[RemoteFile]:
    """The release files ``only`` selects, with their addresses (``mirror`` + name, or NIH's where one is known)."""
    if only not in ONLY_CHOICES:
        raise DownloadError(f"--only: {only!r} is not one of {', '.join(ONLY_CHOICES)}")
    base = _mirror_base(mirror) if mirror else None
    files = []
    if only in ("all", "metadata"):
        per_file = release.APPROX_METADATA_BYTES // len(release.METADATA_NAMES)
        files += [RemoteFile(n, urljoin(base, n) if base else None, "metadata", per_file)
                  for n in release.METADATA_NAMES]
    if only in ("all", "images"):
        files += [RemoteFile(n, urljoin(base, n) if base else release.ARCHIVE_URLS[n], "archive",
                             release.APPROX_ARCHIVE_BYTES[n]) for n in release.ARCHIVE_NAMES]
    return files


def _mirror_base(mirror: str) -> str:
    parsed = urlparse(mirror)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise DownloadError(f"--mirror: {mirror!r} is not an http(s) URL (e.g. https://mirror.example.org/nih/)")
    return mirror if mirror.endswith("/") else mirror + "/"


def download_release(dest: Path, options: DownloadOptions | None = None) -> DownloadReport:
    """Fetch, verify and unpack the release files ``options`` selects into ``dest`` (see the module docstring)."""
    options = options or DownloadOptions()
    if not 1 <= options.jobs <= MAX_JOBS:
        raise DownloadError(f"--jobs: must be between 1 and {MAX_JOBS}, got {options.jobs}")
    files = plan_files(only=options.only, mirror=options.mirror)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest}: exists and is not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    job = _Job(dest, options)
    job.run(files)
    job.report.seconds = time.monotonic() - start
    return job.report


# ------------------------------------------------------------------------------------------------ the manifest
class _Manifest:
    """``DEST/download_manifest.json``: one entry per completed file; thread-safe, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.doc: dict[str, Any] = {"schema": MANIFEST_SCHEMA, "files": {}}
        if path.is_file():
            try:
                doc = json.loads(path.read_text())
                if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
                    raise ValueError("no 'files' mapping")
            except ValueError as exc:
                raise DownloadError(f"{path}: unreadable manifest ({exc}); delete it to start over (files already "
                                    "in the folder are then fetched again)") from exc
            self.doc = doc

    def get(self, name: str) -> dict[str, Any] | None:
        with self.lock:
            entry = self.doc["files"].get(name)
            return dict(entry) if entry else None

    def put(self, name: str, entry: dict[str, Any] | None) -> None:
        with self.lock:
            if entry is None:
                self.doc["files"].pop(name, None)
            else:
                self.doc["files"][name] = entry
            try:
                write_json_atomic(self.path, self.doc)
            except OSError as exc:
                raise write_error(self.path, exc) from exc


# ------------------------------------------------------------------------------------------------ progress bars
class _Bars:
    """An overall byte bar plus one bar per file in flight (tqdm; all disabled without progress)."""

    def __init__(self, *, enabled: bool, jobs: int) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.enabled = enabled
        self.overall: Any = None  # created with the first transfer, so that a refusal prints no empty bar
        self._slots = list(range(jobs, 0, -1))
        self._lock = threading.Lock()

    @contextmanager
    def file(self, desc: str, total: int | None, initial: int = 0) -> Iterator[Any]:
        with self._lock:
            slot = self._slots.pop() if self._slots else 1
        bar = self._tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=desc, leave=False,
                         position=slot, disable=not self.enabled)
        try:
            yield bar
        finally:
            bar.close()
            with self._lock:
                self._slots.append(slot)

    def add_total(self, nbytes: int) -> None:
        with self._lock:
            if self.overall is None:
                self.overall = self._tqdm(total=0, unit="B", unit_scale=True, desc="total", position=0,
                                          disable=not self.enabled)
            self.overall.total = (self.overall.total or 0) + nbytes
            self.overall.refresh()

    def advance(self, nbytes: int) -> None:
        if self.overall is not None:
            self.overall.update(nbytes)

    def close(self) -> None:
        if self.overall is not None:
            self.overall.close()


# ------------------------------------------------------------------------------------------------ low-level I/O
def _write_chunk(fh: Any, data: bytes, *, what: Path) -> None:
    """Write ``data``; a full disk or any other write failure becomes one clear DownloadError (never retried)."""
    try:
        fh.write(data)
    except OSError as exc:
        raise write_error(what, exc) from exc


@contextmanager
def _writing(path: Path, mode: str, *, what: Path) -> Iterator[Any]:
    """Open ``path`` for writing; failures to open, write (``_write_chunk``) or flush on close become
    ``write_error``; an exception from the body (a read error, say) closes the file and passes through unchanged."""
    try:
        fh = path.open(mode)
    except OSError as exc:
        raise write_error(what, exc) from exc
    try:
        yield fh
    except BaseException:
        with suppress(OSError):
            fh.close()
        raise
    try:
        fh.close()
    except OSError as exc:
        raise write_error(what, exc) from exc


def _flush(fh: Any, *, what: Path) -> None:
    try:
        fh.flush()
    except OSError as exc:
        raise write_error(what, exc) from exc


def write_error(what: Path, exc: OSError) -> DownloadError:
    """The one-line error for a failed write: a full disk says so and says what a rerun will do."""
    if exc.errno in DISK_FULL_ERRNOS:
        return DownloadError(f"{what}: disk full ({exc.strerror or exc}); free some space and rerun (finished "
                             "files are kept, transfers resume, an interrupted unpack is redone)")
    return DownloadError(f"{what}: cannot write ({exc})")


def _add(items: list[str], name: str) -> None:
    if name not in items:
        items.append(name)


def file_digest(path: Path, algorithm: str = "sha256", *, on_bytes: Callable[[int], None] | None = None) -> str:
    """Hex digest of a file, read in 1 MiB blocks (``on_bytes`` is told each block's size, for a progress bar)."""
    h = hashlib.new(algorithm)
    with Path(path).open("rb") as fh:
        while block := fh.read(CHUNK_BYTES):
            h.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return h.hexdigest()


class _RestartTransfer(Exception):
    """The server's answer cannot be appended to the part file (Range ignored or misaligned)."""


class _ShortTransfer(Exception):
    """The connection ended before the announced number of bytes arrived."""


class _Cancelled(Exception):
    """Another transfer failed; this one stops at the next chunk (its .part is kept for a resume)."""


class _Damaged(Exception):
    """The archive cannot be unpacked (gzip/tar error): fetched again once."""


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range: bytes a-b/total`` header (None where absent or '*')."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    first = span.partition("-")[0]
    return (int(first) if first.isdigit() else None), (int(total) if total.isdigit() else None)


# ------------------------------------------------------------------------------------------------ one download job
class _Job:
    """One ``download_release`` call: the manifest, the bars, the report and the stop flag shared by the workers."""

    def __init__(self, dest: Path, options: DownloadOptions) -> None:
        self.dest = dest
        self.options = options
        self.manifest = _Manifest(dest / MANIFEST_NAME)
        self.report = DownloadReport(dest=dest)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.bars: _Bars | None = None

    # -- orchestration ------------------------------------------------------------------------------------------
    def run(self, files: list[RemoteFile]) -> None:
        self.bars = _Bars(enabled=self.options.progress, jobs=self.options.jobs)
        try:
            self._run(files)
        finally:
            self.bars.close()

    def _run(self, files: list[RemoteFile]) -> None:
        metadata = [f for f in files if f.kind == "metadata"]
        archives = [f for f in files if f.kind == "archive"]
        todo_meta = [f for f in metadata if not self._metadata_present(f)]
        fetch_meta = [f for f in todo_meta if f.url is not None]
        self.report.missing_metadata = [f.name for f in todo_meta if f.url is None]
        if self.report.missing_metadata:
            log.info("%s", missing_metadata_message(self.report.missing_metadata, self.dest))
        complete = self._parallel(self._archive_complete, archives)  # re-hashes kept archives: jobs at a time
        pending = [f for f, ok in zip(archives, complete, strict=True) if not ok]
        self.report.skipped += [f.name for f, ok in zip(archives, complete, strict=True) if ok]
        transfers = fetch_meta + [f for f in pending if not self._archive_file(f).is_file()]
        if transfers:
            self._probe(transfers[0].url)
        self._check_disk(transfers, pending)
        for f in fetch_meta:
            self._fetch_metadata(f)
        self._parallel(self._process_archive, pending)
        self.report.images = sum(len(self._read_members(f.name) or ()) for f in archives)

    def _parallel(self, fn: Callable[[RemoteFile], Any], files: list[RemoteFile]) -> list[Any]:
        """``fn`` over ``files``, ``options.jobs`` at a time; the first failure stops the others and is raised."""
        if not files:
            return []
        with ThreadPoolExecutor(max_workers=self.options.jobs, thread_name_prefix="cxrmtl-download") as pool:
            futures = [pool.submit(fn, f) for f in files]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:  # Ctrl-C: let the workers stop at their next chunk; .part files stay for a resume
                self.stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            if any(fut.done() and not fut.cancelled() and fut.exception() is not None for fut in futures):
                self.stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
        errors = [fut.exception() for fut in futures if not fut.cancelled() and fut.exception() is not None]
        if errors:
            raise next((e for e in errors if not isinstance(e, _Cancelled)), errors[0])
        return [fut.result() for fut in futures]

    # -- checks before writing ------------------------------------------------------------------------------------
    def _probe(self, url: str | None) -> None:
        """One quick TCP connect to the first host needed, so that being offline is one clear line, not retries."""
        parsed = urlparse(url or "")
        host = parsed.hostname or ""
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
                return
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise DownloadError(f"cannot reach {parsed.netloc} ({reason}); use --mirror URL or download by hand "
                                f"from {release.RELEASE_PAGE} (docs/download.md)") from exc

    def _check_disk(self, transfers: list[RemoteFile], pending: list[RemoteFile]) -> None:
        sizes = {}
        download = 0
        for f in transfers:
            sizes[f.name] = (self._remote_size(f.url) if f.url else None) or f.approx_bytes
            part = self._part(self._target(f))
            download += max(sizes[f.name] - (part.stat().st_size if part.is_file() else 0), 0)
        unpack = 0
        for f in pending:
            path = self._archive_file(f)
            size = path.stat().st_size if path.is_file() else sizes.get(f.name, f.approx_bytes)
            unpack += int(size * release.EXTRACT_RATIO)
        need = download + unpack
        free = shutil.disk_usage(self.dest).free
        if need + DISK_MARGIN_BYTES > free:
            raise DownloadError(
                f"{self.dest}: needs about {_gb(need + DISK_MARGIN_BYTES)} free (downloads {_gb(download)} + "
                f"unpacking {_gb(unpack)} + {_gb(DISK_MARGIN_BYTES)} spare), only {_gb(free)} free; free some space "
                "or choose another DEST")
        log.info("disk: about %s needed (downloads %s, unpacking %s), %s free", _gb(need), _gb(download),
                 _gb(unpack), _gb(free))

    def _remote_size(self, url: str) -> int | None:
        """Content-Length of a HEAD answer (after redirects), or None when the server does not say."""
        request = urllib.request.Request(url, method="HEAD", headers=_headers())
        try:
            with _urlopen(request, timeout=min(HEAD_TIMEOUT_S, self.options.timeout_s)) as resp:
                length = resp.headers.get("Content-Length")
                return int(length) if length and length.isdigit() else None
        except (*_NETWORK_ERRORS, ValueError, OSError):
            return None

    # -- paths and state ------------------------------------------------------------------------------------------
    def _archive_file(self, f: RemoteFile) -> Path:
        return self.dest / ARCHIVE_DIR / f.name

    def _target(self, f: RemoteFile) -> Path:
        return self._archive_file(f) if f.kind == "archive" else self.dest / f.name

    @staticmethod
    def _part(path: Path) -> Path:
        return path.with_name(path.name + PART_SUFFIX)

    def _members_file(self, name: str) -> Path:
        return self.dest / STATE_DIR / f"{name}.members"

    def _read_members(self, name: str) -> list[tuple[str, int]] | None:
        path = self._members_file(name)
        if not path.is_file():
            return None
        rows = []
        for line in path.read_text().splitlines():
            member, _, size = line.partition("\t")
            if not member or not size.isdigit():
                return None
            rows.append((member, int(size)))
        return rows

    def _members_present(self, name: str) -> bool:
        members = self._read_members(name)
        if members is None:
            return False
        images = self.dest / labels.IMAGE_DIR_NAME
        for member, size in members:
            try:
                if (images / member).stat().st_size != size:
                    return False
            except OSError:
                return False
        return True

    # -- metadata -------------------------------------------------------------------------------------------------
    def _metadata_present(self, f: RemoteFile) -> bool:
        """True when DEST holds this file (or, for Data_Entry / BBox, another accepted name of it) and it verifies."""
        path = self._target(f)
        alternatives = {labels.DATA_ENTRY_NAMES[0]: labels.DATA_ENTRY_NAMES, labels.BBOX_NAMES[0]: labels.BBOX_NAMES}
        candidates = [self.dest / n for n in alternatives.get(f.name, (f.name,))]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            return False
        entry = self.manifest.get(found.name)
        size = found.stat().st_size
        if entry and entry.get("size") == size and entry.get("sha256") == file_digest(found):
            self.report.skipped.append(found.name)
            return True
        if entry and f.url is not None and found == path:
            self.report.notes.append(f"{found.name}: changed since it was downloaded; fetching it again")
            self.report.refetched.append(found.name)
            found.unlink()
            self.manifest.put(found.name, None)
            return False
        self._record_metadata(found, source=entry.get("source", "by hand") if entry else "by hand")
        self.report.skipped.append(found.name)
        return True

    def _fetch_metadata(self, f: RemoteFile) -> None:
        path = self._target(f)
        self._transfer(f, path)
        self._record_metadata(path, source=f.url or "")

    def _record_metadata(self, path: Path, *, source: str) -> None:
        entry, note = metadata_entry(path, source=source)
        if note:
            self.report.notes.append(note)
        self.manifest.put(path.name, entry)

    # -- archives -------------------------------------------------------------------------------------------------
    def _archive_complete(self, f: RemoteFile) -> bool:
        """Complete = recorded, unpacked, every unpacked image present with its size, and the archive (when kept)
        still hashing to its recorded SHA-256."""
        entry = self.manifest.get(f.name)
        if not entry or not entry.get("extracted") or not self._members_present(f.name):
            return False
        path = self._archive_file(f)
        if not path.is_file():
            return True  # removed by the user after unpacking: the images were verified by name and size above
        if path.stat().st_size != entry.get("size") or self._hash(path, f"verify {f.name}") != entry.get("sha256"):
            with self.lock:
                self.report.notes.append(f"{f.name}: archive differs from the manifest; checking it again")
            return False
        return True

    def _hash(self, path: Path, desc: str) -> str:
        with self.bars.file(desc, path.stat().st_size) as bar:
            return file_digest(path, on_bytes=bar.update)

    def _process_archive(self, f: RemoteFile) -> None:
        """Verify or fetch, then unpack one archive; a damaged archive is fetched again once."""
        path = self._archive_file(f)
        entry = self.manifest.get(f.name)
        if path.is_file() and not (entry and entry.get("size") == path.stat().st_size
                                   and entry.get("sha256") == self._hash(path, f"verify {f.name}")):
            self._forget(f, path)
            with self.lock:
                self.report.notes.append(f"{f.name}: archive on disk does not match the manifest; fetched again")
                self.report.refetched.append(f.name)
        for attempt in range(2):
            if not path.is_file():
                self._fetch_archive(f, path)
            try:
                self._extract(f, path)
                return
            except _Damaged as exc:
                self._forget(f, path)
                if attempt == 1:
                    raise DownloadError(
                        f"{f.name}: damaged archive ({exc}) twice in a row from {f.url}; the server's copy may be "
                        f"damaged: try another --mirror or download it by hand from {release.RELEASE_PAGE}") from exc
                log.warning("%s: damaged archive (%s); fetching it again", f.name, exc)
                with self.lock:
                    self.report.notes.append(f"{f.name}: damaged archive ({exc}); fetched again")
                    self.report.refetched.append(f.name)

    def _forget(self, f: RemoteFile, path: Path) -> None:
        path.unlink(missing_ok=True)
        self._members_file(f.name).unlink(missing_ok=True)
        self.manifest.put(f.name, None)

    def _fetch_archive(self, f: RemoteFile, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._transfer(f, path)
        digest = self._hash(path, f"sha256 {f.name}")
        self.manifest.put(f.name, {"kind": "archive", "source": f.url, "size": path.stat().st_size,
                                   "sha256": digest, "downloaded": _now(), "extracted": False})

    # -- transfer with resume -------------------------------------------------------------------------------------
    def _transfer(self, f: RemoteFile, path: Path) -> None:
        """Fetch ``f.url`` into ``path`` through ``path.part``, resuming and retrying (see the module docstring)."""
        part = self._part(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        attempt = 0
        while True:
            if self.stop.is_set():
                raise _Cancelled(f.name)
            have = part.stat().st_size if part.is_file() else 0
            try:
                if self._transfer_once(f, part, have):
                    break
            except _RestartTransfer as exc:
                log.warning("%s: %s; starting again from byte 0", f.name, exc)
                part.unlink(missing_ok=True)
                attempt += 1
            except urllib.error.HTTPError as exc:
                if exc.code not in RETRY_STATUS:
                    raise DownloadError(f"{f.name}: {f.url} answered HTTP {exc.code} {exc.reason}") from exc
                attempt = self._back_off(f, attempt, f"HTTP {exc.code}", part)
            except (_ShortTransfer, *_NETWORK_ERRORS) as exc:
                attempt = self._back_off(f, attempt, str(exc) or type(exc).__name__, part)
            if attempt > self.options.retries:
                raise DownloadError(f"{f.name}: could not fetch {f.url} in {self.options.retries + 1} attempts")
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(part, path)
        fsync_dir(path.parent)

    def _back_off(self, f: RemoteFile, attempt: int, reason: str, part: Path) -> int:
        attempt += 1
        have = part.stat().st_size if part.is_file() else 0
        if attempt > self.options.retries:
            raise DownloadError(f"{f.name}: transfer from {f.url} failed {attempt} times (last: {reason}); rerun "
                                f"to resume from byte {have:,}")
        delay = min(self.options.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
        log.warning("%s: %s at byte %s; retry %d of %d in %.1f s", f.name, reason, f"{have:,}", attempt,
                    self.options.retries, delay)
        if self.stop.wait(delay):
            raise _Cancelled(f.name)
        return attempt

    def _transfer_once(self, f: RemoteFile, part: Path, have: int) -> bool:
        """One request; True when ``part`` now holds the whole file."""
        headers = _headers()
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(f.url, headers=headers)
        try:
            resp = _urlopen(request, timeout=self.options.timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing left after `have`: complete if the server's size says so
                _, total = _content_range(exc.headers.get("Content-Range"))
                if total == have:
                    return True
                raise _RestartTransfer(f"server refused the range from byte {have} (size {total})") from exc
            raise
        with resp:
            start, total = self._answer_span(resp, have)
            mode = "ab" if start else "wb"  # a server that ignored Range sent the whole file: rewrite the part
            with self.lock:
                _add(self.report.downloaded, f.name)
                if start:
                    _add(self.report.resumed, f.name)
            self.bars.add_total((total or 0) - start)
            written = start
            with _writing(part, mode, what=part) as fh, self.bars.file(f.name, total, initial=start) as bar:
                while block := resp.read1(CHUNK_BYTES):  # what has arrived: a kill loses little
                    if self.stop.is_set():
                        raise _Cancelled(f.name)
                    _write_chunk(fh, block, what=part)
                    _flush(fh, what=part)  # the bytes reach the OS now: a killed process keeps them for a resume
                    written += len(block)
                    bar.update(len(block))
                    self.bars.advance(len(block))
                    with self.lock:
                        self.report.bytes_transferred += len(block)
        if total is not None and written != total:
            raise _ShortTransfer(f"connection closed after {written:,} of {total:,} bytes")
        return True

    @staticmethod
    def _answer_span(resp: Any, have: int) -> tuple[int, int | None]:
        """(first byte of the body, total size) of an answer to a request from byte ``have``."""
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if resp.status == 206:
            first, total = _content_range(resp.headers.get("Content-Range"))
            if first != have:
                raise _RestartTransfer(f"server answered from byte {first} instead of {have}")
            return have, total if total is not None else (have + length if length is not None else None)
        if have:
            log.warning("server ignored the Range request (HTTP %s); rewriting the part file from byte 0", resp.status)
        return 0, length

    # -- unpacking ------------------------------------------------------------------------------------------------
    def _extract(self, f: RemoteFile, path: Path) -> None:
        """Unpack ``path`` into DEST/images; mark it unpacked (member list + manifest) only once all is on disk."""
        images = self.dest / labels.IMAGE_DIR_NAME
        images.mkdir(parents=True, exist_ok=True)
        self._members_file(f.name).unlink(missing_ok=True)
        entry = self.manifest.get(f.name) or {}
        if entry.get("extracted"):
            self.manifest.put(f.name, {**entry, "extracted": False})
        members: list[tuple[str, int]] = []
        skipped: list[str] = []
        with self.bars.file(f"unpack {f.name}", path.stat().st_size) as bar:
            try:
                with path.open("rb") as raw, gzip.GzipFile(fileobj=_CountingReader(raw, bar.update)) as gz:
                    with tarfile.open(fileobj=gz, mode="r|") as tar:
                        for member in tar:
                            if self.stop.is_set():
                                raise _Cancelled(f.name)
                            name = self._safe_member(member, f.name)
                            if name is None:
                                if not member.isdir():
                                    skipped.append(member.name)
                                continue
                            members.append((name, member.size))
                            self._write_member(tar, member, images / name)
                    while gz.read(CHUNK_BYTES):  # tar stops at its end marker; gzip checks its CRC only at EOF
                        pass
            except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
                for name, _ in members:  # written from a damaged stream: their bytes cannot be trusted
                    (images / name).unlink(missing_ok=True)
                raise _Damaged(f"{type(exc).__name__}: {exc}") from exc
        if hasattr(os, "sync"):
            os.sync()  # the images must be on disk before the manifest says they are
        fsync_dir(images)
        if skipped:
            with self.lock:
                self.report.notes.append(f"{f.name}: ignored {len(skipped)} member(s) outside images/ "
                                         f"(e.g. {skipped[0]!r})")
        text = "".join(f"{name}\t{size}\n" for name, size in members)
        try:
            atomic_write_text(self._members_file(f.name), text)
        except OSError as exc:
            raise write_error(self._members_file(f.name), exc) from exc
        entry = self.manifest.get(f.name) or {}
        self.manifest.put(f.name, {**entry, "extracted": True, "members": len(members), "extracted_at": _now()})
        with self.lock:
            self.report.extracted.append(f.name)

    def _safe_member(self, member: tarfile.TarInfo, archive: str) -> str | None:
        """The image file name a member unpacks to, None to skip it; unsafe members raise DownloadError."""
        if PurePosixPath(member.name).is_absolute() or ".." in PurePosixPath(member.name).parts:
            raise DownloadError(f"{archive}: unsafe member {member.name!r} (absolute path or '..'); refusing to "
                                "unpack it")
        try:
            tarfile.data_filter(member, str(self.dest))
        except tarfile.FilterError as exc:
            raise DownloadError(f"{archive}: unsafe member {member.name!r} ({exc}); refusing to unpack it") from exc
        if member.issym() or member.islnk():
            raise DownloadError(f"{archive}: member {member.name!r} is a link; the release holds only PNG files")
        parts = [p for p in PurePosixPath(member.name).parts if p not in ("", ".")]
        if member.isdir() or not member.isfile():
            return None
        if len(parts) != 2 or parts[0] != labels.IMAGE_DIR_NAME or parts[1].startswith("."):
            return None
        return parts[1]

    @staticmethod
    def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        source = tar.extractfile(member)  # reading may raise tar/gzip errors: the caller calls those damage
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            with _writing(tmp, "wb", what=target.parent) as fh:
                while block := source.read(CHUNK_BYTES):
                    _write_chunk(fh, block, what=target.parent)
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise write_error(target.parent, exc) from exc
        finally:
            tmp.unlink(missing_ok=True)


def metadata_entry(path: Path, *, source: str) -> tuple[dict[str, Any], str | None]:
    """The manifest entry of a metadata file (size, SHA-256; md5 against the release for the split lists) and a
    note for the user when a split list is not the official one."""
    entry: dict[str, Any] = {"kind": "metadata", "source": source, "size": path.stat().st_size,
                             "sha256": file_digest(path), "recorded": _now()}
    expected = release.SPLIT_LIST_MD5.get(path.name)
    if expected is None:
        return entry, None
    md5 = file_digest(path, "md5")
    entry.update(md5=md5, official_md5=expected, matches_release=md5 == expected)
    if md5 == expected:
        return entry, None
    return entry, (f"{path.name}: md5 {md5} differs from the official release's {expected}: this is not the official "
                   "split, so results are not comparable with published ones")


# ------------------------------------------------------------------------------------------------ a Kaggle copy
@dataclass
class KaggleReport:
    """What ``adopt_kaggle`` found and did."""

    dest: Path
    source: Path
    verified_only: bool  # DEST is the Kaggle folder itself: nothing written
    linked: list[str] = field(default_factory=list)  # images_0NN folders linked into DEST
    copied: list[str] = field(default_factory=list)  # metadata files copied into DEST
    rows: int = 0  # images listed by Data_Entry
    found: int = 0  # of them, image files found by load_index
    official_split: bool = False  # both split lists match the release's md5
    notes: list[str] = field(default_factory=list)


def adopt_kaggle(source: Path, dest: Path) -> KaggleReport:
    """Use an already-downloaded Kaggle copy (``images_0NN/images/*.png`` next to the CSVs) as the release.

    ``load_index`` reads the Kaggle layout as it is, so nothing is unpacked or duplicated: when ``dest`` is another
    folder, its image folders are linked (symbolic links) and its metadata files copied into ``dest``, with a
    manifest; when ``dest`` is ``source`` the copy is only checked. Either way the result is loaded with
    ``load_index`` (a broken layout raises its DataLayoutError) and the split lists are compared with the release.
    """
    from cxrmtl.data.nih import load_index

    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise DownloadError(f"{source}: --kaggle folder not found")
    dirs = [d for d in release.KAGGLE_IMAGE_DIRS if (source / d / labels.IMAGE_DIR_NAME).is_dir()]
    if not dirs:
        raise DownloadError(f"{source}: no images_001/images .. images_012/images folders: not a Kaggle copy of "
                            f"the release ({release.KAGGLE_DATASET})")
    meta = [n for n in (*labels.DATA_ENTRY_NAMES, *labels.BBOX_NAMES, labels.TRAIN_VAL_LIST, labels.TEST_LIST)
            if (source / n).is_file()]
    same = dest.exists() and dest.resolve() == source.resolve()
    report = KaggleReport(dest=dest, source=source, verified_only=same)
    if not same:
        _link_kaggle(source, dest, dirs, meta, report)
    official = []
    for name in (labels.TRAIN_VAL_LIST, labels.TEST_LIST):
        path = dest / name
        if path.is_file():
            entry, note = metadata_entry(path, source=f"kaggle:{source.resolve() / name}")
            official.append(bool(entry.get("matches_release")))
            if note:
                report.notes.append(note)
    report.official_split = len(official) == 2 and all(official)
    index = load_index(dest)
    report.rows = len(index)
    report.found = int((index.table["path"] != "").sum())
    if len(dirs) < len(release.KAGGLE_IMAGE_DIRS):
        missing = sorted(set(release.KAGGLE_IMAGE_DIRS) - set(dirs))
        report.notes.append(f"{source}: image folders missing: {', '.join(missing)}")
    return report


def _link_kaggle(source: Path, dest: Path, dirs: list[str], meta: list[str], report: KaggleReport) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    manifest = _Manifest(dest / MANIFEST_NAME)
    for name in meta:
        src, dst = source / name, dest / name
        if not (dst.is_file() and dst.stat().st_size == src.stat().st_size
                and file_digest(dst) == file_digest(src)):
            tmp = dst.with_name(f".{dst.name}.tmp")
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise write_error(dst, exc) from exc
            report.copied.append(name)
        entry, _ = metadata_entry(dst, source=f"kaggle:{src.resolve()}")
        manifest.put(name, entry)
    for name in dirs:
        link, target = dest / name, (source / name).resolve()
        if link.is_symlink() and link.resolve() == target:
            continue
        if link.exists() or link.is_symlink():
            raise DownloadError(f"{link}: already exists and is not a link to {target}; remove it or choose "
                                "another DEST")
        try:
            link.symlink_to(target, target_is_directory=True)
        except OSError as exc:
            raise DownloadError(f"{link}: cannot create a link to {target} ({exc}); pass DEST = the Kaggle "
                                "folder itself to use it in place") from exc
        report.linked.append(name)
        manifest.put(name, {"kind": "kaggle_images", "source": str(target), "recorded": _now()})


class _CountingReader:
    """A read-only file wrapper that reports how many compressed bytes were consumed (the unpack progress bar)."""

    def __init__(self, raw: Any, on_bytes: Callable[[int], Any]) -> None:
        self._raw = raw
        self._on_bytes = on_bytes

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._on_bytes(len(data))
        return data


class _KeepMethodRedirects(urllib.request.HTTPRedirectHandler):
    """urllib turns a redirected HEAD into a GET (it rebuilds the request without its method): Box answers every
    static link with a redirect, so a size probe would start the whole download. Keep HEAD a HEAD; the Range header
    travels with the redirect as urllib already does."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and req.get_method() == "HEAD":
            new.method = "HEAD"
        return new


_OPENER = urllib.request.build_opener(_KeepMethodRedirects)


def _urlopen(request: urllib.request.Request, *, timeout: float) -> Any:
    return _OPENER.open(request, timeout=timeout)


def _headers() -> dict[str, str]:
    from cxrmtl import __version__

    return {"User-Agent": f"cxrmtl/{__version__} (+docs/download.md)", "Accept-Encoding": "identity"}


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB"


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
