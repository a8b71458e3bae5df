"""The worklist store: one SQLite database (WAL, synchronous=FULL, one writer) and content-addressed files beside it.

Layout, for ``--db DIR/worklist.sqlite``::

    DIR/worklist.sqlite (+ -wal, -shm)   studies and their results
    DIR/worklist.sqlite.lock             held (flock) by the one service using the database
    DIR/worklist-data/images/ab/<sha256>.png|.jpg|.dcm    the uploaded bytes, named by their sha256
    DIR/worklist-data/display/ab/<sha256>.png             8-bit display copy (derived, rebuilt when missing)
    DIR/worklist-data/heatmaps/ab/<sha256>.<model>.<finding>.<mode>.png   Grad-CAM pictures (derived)
    DIR/worklist-data/tmp/                                the service's own temporary files

Durability: ``add_study`` is called only after ``save_image`` has written the image (temp file, fsync, rename,
folder fsync); the row is inserted and committed with ``synchronous=FULL`` (the WAL is fsync'd at commit), and the
service answers 2xx only after the commit returns. A crash at any point leaves either no row (the client got no 2xx
and may retry; the image file, if written, is reused by the retry) or a complete row with its result. No file name
ever comes from a client: images are named by the hash of their bytes, derived files by hash, model and finding.

Threading: one connection, used under a lock; the service calls the store from a single database thread, so there
is exactly one writer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrmtl.fsio import atomic_write_bytes
from cxrmtl.serve.errors import ApiError, ServeError
from cxrmtl.serve.imaging import FORMAT_SUFFIX

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATUSES: tuple[str, ...] = ("unread", "read")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  sha256 TEXT NOT NULL UNIQUE,
  format TEXT NOT NULL,
  width INTEGER NOT NULL,
  height INTEGER NOT NULL,
  study_uid TEXT UNIQUE,
  patient_id TEXT,
  study_date TEXT,
  received REAL NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('unread', 'read')),
  read_at REAL,
  reader TEXT,
  urgency_score REAL NOT NULL,
  urgency_level TEXT NOT NULL,
  urgency_json TEXT NOT NULL,
  result_json TEXT NOT NULL,
  model TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_by_status ON studies (status, received);
CREATE INDEX IF NOT EXISTS studies_by_read_at ON studies (status, read_at);
"""
COLUMNS = ("seq", "id", "sha256", "format", "width", "height", "study_uid", "patient_id", "study_date", "received",
           "status", "read_at", "reader", "urgency_score", "urgency_level", "urgency_json", "result_json", "model")


@dataclass(frozen=True)
class StudyRecord:
    """One stored study (a row), with its result and urgency parsed."""

    seq: int
    id: str
    sha256: str
    format: str
    width: int
    height: int
    study_uid: str | None
    patient_id: str | None
    study_date: str | None
    received: float  # unix seconds (UTC)
    status: str
    read_at: float | None
    reader: str | None
    urgency: dict[str, Any]
    result: dict[str, Any]
    model: str

    @property
    def urgency_score(self) -> float:
        return float(self.urgency["score"])


@dataclass(frozen=True)
class NewStudy:
    """What ``add_study`` stores (the id, hash and timestamps are decided by the service)."""

    id: str
    sha256: str
    format: str
    width: int
    height: int
    study_uid: str | None
    patient_id: str | None
    study_date: str | None
    received: float
    urgency: dict[str, Any]
    result: dict[str, Any]
    model: str


def data_dir_for(db: Path) -> Path:
    """The data folder beside a database file: ``worklist.sqlite`` -> ``worklist-data``."""
    db = Path(db)
    return db.with_name(f"{db.stem}-data")


def _record(row: tuple[Any, ...]) -> StudyRecord:
    values = dict(zip(COLUMNS, row, strict=True))
    urgency = json.loads(values.pop("urgency_json"))
    result = json.loads(values.pop("result_json"))
    values.pop("urgency_score")
    values.pop("urgency_level")
    return StudyRecord(**values, urgency=urgency, result=result)


class Store:
    """The worklist database and its files. Open once per service; ``close`` releases the lock."""

    def __init__(self, db: Path) -> None:
        self.db = Path(db)
        self.data = data_dir_for(self.db)
        self._lock = threading.Lock()
        try:
            self.db.parent.mkdir(parents=True, exist_ok=True)
            for sub in ("images", "display", "heatmaps", "tmp"):
                (self.data / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServeError(f"--db {self.db}: cannot create its folders ({exc.strerror or exc})") from exc
        self._lock_file = self._take_lock()
        self._clean_tmp()
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = sqlite3.connect(self.db, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # the commit that acknowledges a study is on disk
            self._conn.executescript(SCHEMA)
            self._check_schema()
        except BaseException as exc:
            self.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise ServeError(f"--db {self.db}: not a usable SQLite database ({exc})") from exc
            raise

    # ------------------------------------------------------------------------------------------ lifecycle
    def _take_lock(self) -> Any:
        import fcntl

        path = self.db.with_name(self.db.name + ".lock")
        handle = open(path, "a+b")  # noqa: SIM115 -- held open for the life of the store
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ServeError(f"--db {self.db}: another cxrmtl serve is using this database (one writer only)") from None
        return handle

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _clean_tmp(self) -> None:
        for path in (self.data / "tmp").iterdir():  # left by a killed process; no committed row refers to them
            with contextlib.suppress(OSError):
                path.unlink()

    def _check_schema(self) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            with self._transaction() as conn:
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (str(time.time()),))
        elif row[0] != str(SCHEMA_VERSION):
            raise ServeError(f"--db {self.db}: schema {row[0]}, this version reads schema {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._release_lock()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # ------------------------------------------------------------------------------------------ files
    def image_path(self, sha256: str, fmt: str) -> Path:
        return self.data / "images" / sha256[:2] / f"{sha256}{FORMAT_SUFFIX[fmt]}"

    def display_path(self, sha256: str) -> Path:
        return self.data / "display" / sha256[:2] / f"{sha256}.png"

    def heatmap_path(self, sha256: str, *, model: str, finding: str, mode: str) -> Path:
        return self.data / "heatmaps" / sha256[:2] / f"{sha256}.{model}.{finding}.{mode}.png"

    @property
    def tmp_dir(self) -> Path:
        return self.data / "tmp"

    def save_image(self, sha256: str, fmt: str, data: bytes) -> Path:
        """Write the uploaded bytes under their hash (atomic, fsync'd); kept as is when already there."""
        path = self.image_path(sha256, fmt)
        if not (path.is_file() and path.stat().st_size == len(data)):
            atomic_write_bytes(path, data)
        return path

    @staticmethod
    def save_derived(path: Path, data: bytes) -> Path:
        return atomic_write_bytes(path, data)

    # ------------------------------------------------------------------------------------------ rows
    def _select(self, where: str, params: tuple[Any, ...]) -> list[StudyRecord]:
        rows = self._conn.execute(f"SELECT {', '.join(COLUMNS)} FROM studies WHERE {where}", params).fetchall()
        return [_record(r) for r in rows]

    def find_duplicate(self, *, sha256: str, study_uid: str | None) -> StudyRecord | None:
        """The stored study with the same bytes or the same DICOM StudyInstanceUID, if any."""
        with self._lock:
            return self._find_duplicate(sha256, study_uid)

    def _find_duplicate(self, sha256: str, study_uid: str | None) -> StudyRecord | None:
        found = self._select("sha256 = ?", (sha256,))
        if not found and study_uid is not None:
            found = self._select("study_uid = ?", (study_uid,))
        return found[0] if found else None

    def add_study(self, study: NewStudy) -> tuple[StudyRecord, bool]:
        """Insert and commit one study; (record, True) when new, (the existing one, False) for a duplicate."""
        if not self.image_path(study.sha256, study.format).is_file():
            raise RuntimeError("add_study before save_image: the row would point at no file")
        with self._lock, self._transaction() as conn:
            existing = self._find_duplicate(study.sha256, study.study_uid)
            if existing is not None:
                return existing, False
            conn.execute(
                f"INSERT INTO studies ({', '.join(COLUMNS[1:])}) VALUES ({', '.join('?' * (len(COLUMNS) - 1))})",
                (study.id, study.sha256, study.format, study.width, study.height, study.study_uid, study.patient_id,
                 study.study_date, study.received, "unread", None, None, float(study.urgency["score"]),
                 str(study.urgency["level"]), json.dumps(study.urgency, allow_nan=False),
                 json.dumps(study.result, allow_nan=False), study.model))
            record = self._select("id = ?", (study.id,))[0]
        return record, True

    def get(self, study_id: str) -> StudyRecord:
        with self._lock:
            found = self._select("id = ?", (study_id,))
        if not found:
            raise ApiError("study_not_found", f"study {study_id}: no such study")
        return found[0]

    def studies(self, status: str | None) -> list[StudyRecord]:
        """Every study with this status (None: all), oldest first."""
        with self._lock:
            if status is None:
                return self._select("1 = 1 ORDER BY seq", ())
            return self._select("status = ? ORDER BY seq", (status,))

    def recent_read(self, limit: int) -> list[StudyRecord]:
        """The ``limit`` most recently read studies, latest first."""
        with self._lock:
            return self._select("status = 'read' ORDER BY read_at DESC, seq LIMIT ?", (int(limit),))

    def mark_read(self, study_id: str, *, reader: str | None, at: float) -> StudyRecord:
        with self._lock, self._transaction() as conn:
            found = self._select("id = ?", (study_id,))
            if not found:
                raise ApiError("study_not_found", f"study {study_id}: no such study")
            if found[0].status == "read":
                raise ApiError("already_read", f"study {study_id}: already marked as read")
            conn.execute("UPDATE studies SET status = 'read', read_at = ?, reader = ? WHERE id = ?",
                         (at, reader, study_id))
            return self._select("id = ?", (study_id,))[0]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT status, COUNT(*) FROM studies GROUP BY status").fetchall()
        out = dict.fromkeys(STATUSES, 0)
        out.update({status: int(n) for status, n in rows})
        return out

    def writable(self) -> bool:
        """True when the database takes a write lock and the data folder accepts files."""
        try:
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute("ROLLBACK")
            return os.access(self.data / "images", os.W_OK) and os.access(self.tmp_dir, os.W_OK)
        except (sqlite3.Error, AttributeError):
            return False
