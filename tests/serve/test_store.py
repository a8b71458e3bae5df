"""The worklist store without a model: durability order, duplicates, read state, one writer, schema guard."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from cxrmtl.serve.errors import ApiError, ServeError
from cxrmtl.serve.store import NewStudy, Store, data_dir_for


def new(data: bytes, *, uid: str | None = None, score: float = 0.5, sid: str | None = None) -> NewStudy:
    sha = hashlib.sha256(data).hexdigest()
    return NewStudy(id=sid or sha[:32], sha256=sha, format="png", width=8, height=8, study_uid=uid,
                    patient_id="P1" if uid else None, study_date=None, received=1000.0,
                    urgency={"score": score, "level": "urgent", "top_finding": "Effusion", "positives": ["Effusion"]},
                    result={"findings": {"Effusion": {"probability": 0.9, "threshold": 0.5, "positive": True}}},
                    model="abc123")


def test_rows_point_at_files_and_duplicates_are_found(tmp_path: Path) -> None:
    store = Store(tmp_path / "w.sqlite")
    try:
        assert data_dir_for(tmp_path / "w.sqlite") == tmp_path / "w-data" == store.data
        study = new(b"one")
        with pytest.raises(RuntimeError, match="save_image"):
            store.add_study(study)  # never a row without its image file
        path = store.save_image(study.sha256, "png", b"one")
        assert path == store.data / "images" / study.sha256[:2] / f"{study.sha256}.png" and path.read_bytes() == b"one"
        record, created = store.add_study(study)
        assert created and record.status == "unread" and record.result["findings"]["Effusion"]["positive"]
        again, created = store.add_study(new(b"one", sid="f" * 32))
        assert not created and again.id == record.id  # same bytes
        dicom = new(b"two", uid="1.2.3")
        store.save_image(dicom.sha256, "png", b"two")
        first, _ = store.add_study(dicom)
        other = new(b"three", uid="1.2.3")
        store.save_image(other.sha256, "png", b"three")
        same, created = store.add_study(other)
        assert not created and same.id == first.id  # same StudyInstanceUID
        assert store.find_duplicate(sha256="0" * 64, study_uid="1.2.3").id == first.id
        assert store.counts() == {"unread": 2, "read": 0}
        read = store.mark_read(record.id, reader="AB", at=2000.0)
        assert read.status == "read" and read.read_at == 2000.0 and read.reader == "AB"
        with pytest.raises(ApiError) as twice:
            store.mark_read(record.id, reader=None, at=2001.0)
        assert twice.value.code == "already_read"
        with pytest.raises(ApiError) as missing:
            store.get("0" * 32)
        assert missing.value.code == "study_not_found"
        assert [r.id for r in store.recent_read(5)] == [record.id]
        assert [r.id for r in store.studies("unread")] == [first.id] and len(store.studies(None)) == 2
        assert store.writable()
    finally:
        store.close()


def test_one_writer_per_database_and_schema_guard(tmp_path: Path) -> None:
    db = tmp_path / "w.sqlite"
    store = Store(db)
    with pytest.raises(ServeError, match="another cxrmtl serve"):
        Store(db)
    store.close()
    Store(db).close()  # the lock is released on close
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(ServeError, match="schema 99"):
        Store(db)
    bad = tmp_path / "junk.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ServeError, match="not a usable SQLite database"):
        Store(bad)
    Store(bad.with_name("ok.sqlite")).close()  # a failed open left no lock behind for others


def test_leftover_temporary_files_are_removed(tmp_path: Path) -> None:
    store = Store(tmp_path / "w.sqlite")
    (store.tmp_dir / "upload-123.bin").write_bytes(b"half an upload")
    store.close()
    store = Store(tmp_path / "w.sqlite")
    assert not list(store.tmp_dir.iterdir())
    store.close()
