"""What the routes do: decode uploads off the event loop, score them through the dynamic batcher, keep the worklist.

``Service`` owns three kinds of threads, so the event loop only awaits: a decode pool (sniff, probe, decode,
preprocess, PNG encoding), one database thread (the store's single writer) and the model thread of the
``DynamicBatcher`` (forward passes and Grad-CAM, never concurrently). Results are the ``Predictor``'s result dicts
(schema in ``infer.results``) plus the triage urgency (``triage.urgency.score_urgency`` on the calibrated finding
probabilities against the thresholds shown with them, as ``cxrmtl predict`` does). The worklist order is
``triage.worklist.order_worklist``: studies that waited longer than the upper limit first (oldest first), then
urgency, then arrival.

Nothing read from a DICOM header, and no client file name, is ever logged: log lines name studies by the id the
service gave them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cxrmtl import labels as L
from cxrmtl.serve import imaging
from cxrmtl.serve.batching import DynamicBatcher
from cxrmtl.serve.errors import ApiError
from cxrmtl.serve.metrics import Metrics
from cxrmtl.serve.store import NewStudy, Store, StudyRecord

log = logging.getLogger(__name__)

DISCLAIMER = "Decision support, not a diagnosis"
DEFAULT_UPPER_LIMIT_MINUTES = L.SERVE_UPPER_LIMIT_MINUTES
ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
STATUS_FILTERS: dict[str, tuple[str, ...]] = {"unread": ("unread",), "read": ("read",), "all": ("unread", "read")}
MAX_LIST_LIMIT = 1000
T = TypeVar("T")


@dataclass(frozen=True)
class ServeSettings:
    """Knobs of one service process (the CLI options of ``cxrmtl serve``)."""

    max_upload_bytes: int = 50 * 1024 * 1024
    max_batch: int = 16
    batch_window_ms: float = 10.0
    upper_limit_minutes: float | None = DEFAULT_UPPER_LIMIT_MINUTES
    api_keys: tuple[str, ...] = ()
    decode_workers: int = 2
    checkpoint: str = "best"
    prediction_ttl_s: float = 600.0  # how long the heatmap links of a /v1/predict answer work
    prediction_cache_bytes: int = 128 * 1024 * 1024  # upload bytes kept in memory for those links, at most

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_batch < 1 or self.batch_window_ms < 0 or self.decode_workers < 1:
            raise ValueError("max_upload_bytes, max_batch and decode_workers must be >= 1, batch_window_ms >= 0")
        if self.upper_limit_minutes is not None and not self.upper_limit_minutes > 0:
            raise ValueError(f"upper_limit_minutes must be positive, got {self.upper_limit_minutes}")


def iso(t: float | None) -> str | None:
    """Unix seconds -> ISO 8601 UTC with a Z (None stays None)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def check_id(value: str, *, what: str = "study id") -> str:
    if not ID_PATTERN.match(value):
        raise ApiError("invalid_id", f"{what}: expected 32 lowercase hexadecimal characters")
    return value


@dataclass
class _Cached:
    upload: imaging.Upload
    expires: float


@dataclass
class PredictionCache:
    """Uploads of recent /v1/predict calls, in memory only, for their heatmap links: TTL and a byte budget."""

    ttl_s: float
    max_bytes: int
    _items: OrderedDict[str, _Cached] = field(default_factory=OrderedDict)
    _bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, upload: imaging.Upload) -> str:
        token = secrets.token_hex(16)
        with self._lock:
            self._expire(time.monotonic())
            self._items[token] = _Cached(upload, time.monotonic() + self.ttl_s)
            self._bytes += len(upload.data)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old.upload.data)
        return token

    def __len__(self) -> int:
        return len(self._items)

    def get(self, token: str) -> imaging.Upload | None:
        with self._lock:
            self._expire(time.monotonic())
            item = self._items.get(token)
            return item.upload if item is not None else None

    def _expire(self, now: float) -> None:
        while self._items:
            token, item = next(iter(self._items.items()))
            if item.expires > now:
                return
            del self._items[token]
            self._bytes -= len(item.upload.data)


def checkpoint_key(run: Path, which: str) -> str:
    """12 hex digits of the checkpoint's sha256: names the model in stored studies and heatmap files."""
    from cxrmtl.runs.layout import RunDir

    rd = RunDir(run)
    path = rd.best if which == "best" else rd.last
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


class Service:
    """The model, the worklist store and the worker threads behind the HTTP routes."""

    def __init__(self, predictor: Any, store: Store, *, settings: ServeSettings | None = None,
                 metrics: Metrics | None = None) -> None:
        from cxrmtl.localize.overlay import finding_columns

        self.predictor = predictor
        self.store = store
        self.settings = settings or ServeSettings()
        self.metrics = metrics or Metrics()
        self.model_key = checkpoint_key(predictor.run, self.settings.checkpoint)
        self.columns = finding_columns(predictor.tasks)
        self.predictions = PredictionCache(self.settings.prediction_ttl_s, self.settings.prediction_cache_bytes)
        self.batcher: DynamicBatcher = DynamicBatcher(predictor.predict_arrays, max_batch=self.settings.max_batch,
                                                      window_ms=self.settings.batch_window_ms,
                                                      on_batch=self.metrics.observe_batch)
        self._decode_pool = ThreadPoolExecutor(self.settings.decode_workers, thread_name_prefix="cxrmtl-decode")
        self._db_pool = ThreadPoolExecutor(1, thread_name_prefix="cxrmtl-db")  # the one writer
        self._torch_model: Any = None

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.batcher.start()
        log.info("serving run %s (backend %s, trained on %s, model %s)", self.predictor.run.name,
                 self.predictor.backend, str(self.predictor.data_kind).upper(), self.model_key)

    def close(self) -> None:
        self.batcher.close()
        self._decode_pool.shutdown(wait=True)
        self._db_pool.shutdown(wait=True)
        self.store.close()

    # ------------------------------------------------------------------------------------------ threads
    async def _in(self, pool: ThreadPoolExecutor, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, function, *args)

    async def _decode(self, function: Callable[..., T], *args: Any) -> T:
        return await self._in(self._decode_pool, function, *args)

    async def _db(self, function: Callable[..., T], *args: Any) -> T:
        return await self._in(self._db_pool, function, *args)

    async def _model(self, function: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self.batcher.call(function))

    # ------------------------------------------------------------------------------------------ scoring
    def _prepare(self, upload: imaging.Upload) -> tuple[np.ndarray, int, int]:
        gray = imaging.decode(upload, tmp_dir=self.store.tmp_dir)
        return self.predictor.preprocess(gray), int(gray.shape[1]), int(gray.shape[0])

    async def _score(self, upload: imaging.Upload) -> tuple[dict[str, Any], dict[str, Any], int, int]:
        """(result, urgency, width, height) of an upload: decode in the pool, predict in a dynamic batch."""
        image, width, height = await self._decode(self._prepare, upload)
        result = await asyncio.wrap_future(self.batcher.submit(image))
        return result, urgency_of(result, self.predictor.operating), width, height

    def _image_json(self, upload: imaging.Upload, width: int, height: int) -> dict[str, Any]:
        return {"format": upload.format, "width": width, "height": height, "sha256": upload.sha256}

    def model_json(self) -> dict[str, Any]:
        p = self.predictor
        return {"run": p.run.name, "checkpoint": self.settings.checkpoint, "model": self.model_key,
                "backend": p.backend, "data_kind": p.data_kind, "image_size": p.image_size,
                "calibrated": bool(p.calibrated),
                "threshold_method": p.operating.default if p.operating is not None else None}

    async def predict(self, data: bytes) -> dict[str, Any]:
        """POST /v1/predict: every task output, the urgency and heatmap links; nothing is written to disk."""
        upload = imaging.sniff(data)
        result, urgency, width, height = await self._score(upload)
        token = self.predictions.put(upload)
        heatmaps = {name: f"/v1/predictions/{token}/heatmap/{name}" for name in self.predictor.finding_names}
        return {"result": result, "urgency": urgency, "image": self._image_json(upload, width, height),
                "heatmaps": heatmaps, "heatmaps_expire": iso(time.time() + self.settings.prediction_ttl_s),
                "model": self.model_json(), "disclaimer": DISCLAIMER}

    # ------------------------------------------------------------------------------------------ worklist
    async def add_study(self, data: bytes) -> tuple[dict[str, Any], bool]:
        """POST /v1/studies: score, store, commit; (study, created). A duplicate (same bytes, or same DICOM
        StudyInstanceUID) returns the stored study and ``created`` False, without scoring again."""
        received = time.time()
        upload = imaging.sniff(data)
        dicom = await self._decode(imaging.dicom_info, data) if upload.format == "dicom" else imaging.DicomInfo()
        existing = await self._db(lambda: self.store.find_duplicate(sha256=upload.sha256,
                                                                    study_uid=dicom.study_instance_uid))
        if existing is not None:
            log.info("study %s: duplicate upload, answered with the stored study", existing.id)
            return self.study_json(existing), False
        result, urgency, width, height = await self._score(upload)
        await self._decode(self.store.save_image, upload.sha256, upload.format, upload.data)  # fsync'd first
        new = NewStudy(id=uuid.uuid4().hex, sha256=upload.sha256, format=upload.format, width=width, height=height,
                       study_uid=dicom.study_instance_uid, patient_id=dicom.patient_id, study_date=dicom.study_date,
                       received=received, urgency=urgency, result=result, model=self.model_key)
        record, created = await self._db(self.store.add_study, new)  # returns after the commit
        if created:
            log.info("study %s stored: %s, urgency %s (%.3f)", record.id, upload.format, urgency["level"],
                     urgency["score"])
        return self.study_json(record), created

    async def study(self, study_id: str) -> dict[str, Any]:
        record = await self._db(self.store.get, check_id(study_id))
        return self.study_json(record, rank=await self._rank(record))

    async def _rank(self, record: StudyRecord) -> int | None:
        if record.status != "unread":
            return None
        ordered = worklist_order(await self._db(self.store.studies, "unread"), now=time.time(),
                                 upper_limit=self.settings.upper_limit_minutes)
        return next((i + 1 for i, (r, _) in enumerate(ordered) if r.id == record.id), None)

    async def studies(self, *, status: str, limit: int) -> dict[str, Any]:
        """GET /v1/studies: unread in worklist order (rank 1 = read next), then read ones, latest read first."""
        now = time.time()
        wanted = STATUS_FILTERS[status]
        counts = await self._db(self.store.counts)
        rows: list[dict[str, Any]] = []
        if "unread" in wanted:  # the whole unread set is needed to order it
            unread = worklist_order(await self._db(self.store.studies, "unread"), now=now,
                                    upper_limit=self.settings.upper_limit_minutes)
            rows += [self.study_json(r, rank=i + 1, now=now, overdue=o, summary=True)
                     for i, (r, o) in enumerate(unread[:limit])]
        if "read" in wanted and len(rows) < limit:
            read = await self._db(self.store.recent_read, limit - len(rows))
            rows += [self.study_json(r, now=now, summary=True) for r in read]
        total = sum(counts[s] for s in wanted)
        return {"studies": rows, "count": total, "returned": len(rows), "counts": counts, "now": iso(now),
                "upper_limit_minutes": self.settings.upper_limit_minutes,
                "order": "waited longer than the upper limit first (oldest first), then urgency, then arrival"}

    async def mark_read(self, study_id: str, *, reader: str | None) -> dict[str, Any]:
        record = await self._db(lambda: self.store.mark_read(check_id(study_id), reader=reader, at=time.time()))
        log.info("study %s marked as read", record.id)
        return self.study_json(record)

    def study_json(self, record: StudyRecord, *, rank: int | None = None, now: float | None = None,
                   overdue: bool | None = None, summary: bool = False) -> dict[str, Any]:
        """The API form of a stored study (``summary``: without the full result, for lists)."""
        now = time.time() if now is None else now
        end = record.read_at if record.read_at is not None else now
        limit = self.settings.upper_limit_minutes
        if overdue is None:
            overdue = record.status == "unread" and limit is not None and (now - record.received) / 60 > limit
        top = record.urgency.get("top_finding")
        base = f"/v1/studies/{record.id}"
        doc: dict[str, Any] = {
            "id": record.id, "status": record.status, "rank": rank, "received": iso(record.received),
            "waiting_minutes": round(max(0.0, end - record.received) / 60, 2), "overdue": bool(overdue),
            "read_at": iso(record.read_at), "reader": record.reader, "urgency": record.urgency,
            "top_probability": record.result.get("findings", {}).get(top, {}).get("probability") if top else None,
            "image": {"format": record.format, "width": record.width, "height": record.height,
                      "sha256": record.sha256},
            "dicom": ({"patient_id": record.patient_id, "study_instance_uid": record.study_uid,
                       "study_date": record.study_date} if record.format == "dicom" else None),
            "model": record.model,
            "links": {"self": base, "image": f"{base}/image", "read": f"{base}/read"},
        }
        if not summary:
            doc["result"] = record.result
            doc["links"]["heatmaps"] = {n: f"{base}/heatmap/{n}" for n in self.predictor.finding_names}
        return doc

    # ------------------------------------------------------------------------------------------ pictures
    def _display_png(self, record: StudyRecord) -> bytes:
        path = self.store.display_path(record.sha256)
        if path.is_file():
            return path.read_bytes()
        gray = _read_stored(self.store.image_path(record.sha256, record.format))
        data = imaging.png_bytes(imaging.display_image(gray))
        self.store.save_derived(path, data)
        return data

    async def study_image(self, study_id: str) -> bytes:
        record = await self._db(self.store.get, check_id(study_id))
        return await self._decode(self._display_png, record)

    def _check_finding(self, finding: str) -> str:
        if finding not in self.columns:
            raise ApiError("unknown_finding", f"finding: the model has no finding {finding[:64]!r} "
                           f"(one of {', '.join(self.columns)})")
        return finding

    async def _heatmap(self, gray: np.ndarray, finding: str, mode: str) -> bytes:
        image = await self._decode(self.predictor.preprocess, gray)
        cam = await self._model(lambda: self._cam(image, finding))
        height, width = gray.shape
        display = await self._decode(imaging.display_image, gray)
        picture = await self._decode(lambda: imaging.heatmap_picture(display, cam, width=width, height=height,
                                                                     mode=mode))
        return await self._decode(imaging.png_bytes, picture)

    async def study_heatmap(self, study_id: str, finding: str, *, mode: str) -> bytes:
        record = await self._db(self.store.get, check_id(study_id))
        self._check_finding(finding)
        path = self.store.heatmap_path(record.sha256, model=self.model_key, finding=finding, mode=mode)
        if path.is_file():
            return await self._decode(path.read_bytes)
        gray = await self._decode(_read_stored, self.store.image_path(record.sha256, record.format))
        data = await self._heatmap(gray, finding, mode)
        await self._decode(self.store.save_derived, path, data)
        return data

    async def prediction_heatmap(self, token: str, finding: str, *, mode: str) -> bytes:
        upload = self.predictions.get(check_id(token, what="prediction id"))
        if upload is None:
            raise ApiError("prediction_not_found", "prediction id: unknown or expired (links of /v1/predict last "
                           f"{self.settings.prediction_ttl_s / 60:g} minutes)")
        self._check_finding(finding)
        gray = await self._decode(lambda: imaging.decode(upload, tmp_dir=self.store.tmp_dir))
        return await self._heatmap(gray, finding, mode)

    def _cam(self, image: np.ndarray, finding: str) -> np.ndarray:
        """Grad-CAM of one finding on one preprocessed image; runs on the model thread."""
        from cxrmtl.localize.cam import grad_cam

        task, column = self.columns[finding]
        return grad_cam(self.torch_model(), self.predictor.normalize([image]), task=task, columns=[column])[0]

    def torch_model(self) -> Any:
        """The torch network for Grad-CAM: the Predictor's, or (for a predictor without one) loaded once, lazily."""
        if getattr(self.predictor, "model", None) is not None:
            return self.predictor.model
        if self._torch_model is None:
            from cxrmtl.runs.checkpoint import load_run

            self._torch_model = load_run(self.predictor.run, which=self.settings.checkpoint, device="cpu").model
        return self._torch_model

    # ------------------------------------------------------------------------------------------ health
    async def health(self) -> dict[str, bool]:
        writable = await self._db(self.store.writable)
        return {"model_loaded": self.batcher.alive, "db_writable": bool(writable)}

    async def gauges(self) -> dict[str, tuple[str, float]]:
        """The gauges /metrics shows next to the counters."""
        counts = await self._db(self.store.counts)
        return {"batch_queue_length": ("Images waiting for the model (dynamic batching queue).",
                                       float(self.batcher.queue_length)),
                "worklist_unread": ("Studies waiting to be read.", float(counts["unread"])),
                "worklist_read": ("Studies marked as read.", float(counts["read"])),
                "prediction_cache_items": ("Uploads kept in memory for /v1/predict heatmap links.",
                                           float(len(self.predictions)))}


def urgency_of(result: dict[str, Any], operating: Any) -> dict[str, Any]:
    """The triage urgency of one result dict: the worklist's rule (``triage.urgency.score_result``)."""
    from cxrmtl.triage.urgency import score_result

    return score_result(result, operating).to_dict()


def worklist_order(records: list[StudyRecord], *, now: float, upper_limit: float | None
                   ) -> list[tuple[StudyRecord, bool]]:
    """Unread studies in reading order with their overdue flag (triage.worklist, times in minutes)."""
    from cxrmtl.triage.worklist import QueuedStudy, is_overdue, order_worklist

    by_id = {r.id: r for r in records}
    queued = [QueuedStudy(id=r.id, arrival=r.received / 60, urgency=r.urgency_score) for r in records]
    ordered = order_worklist(queued, now=now / 60, upper_limit_minutes=upper_limit)
    return [(by_id[q.id], is_overdue(q, now=now / 60, upper_limit_minutes=upper_limit)) for q in ordered]


def _read_stored(path: Path) -> np.ndarray:
    """Decode an image file the store wrote (it was decoded once already, so failure is a server fault)."""
    from cxrmtl.data.imageio import read_gray

    return read_gray(path)
