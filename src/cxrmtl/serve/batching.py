"""Dynamic batching: concurrent requests share one forward pass, on the one thread that owns the model.

Requests ``submit`` an item and get a ``concurrent.futures.Future`` (an async route awaits it through
``asyncio.wrap_future``, so the event loop never runs the model). The model thread takes the first waiting item,
then keeps taking items until ``max_batch`` are gathered or ``window_ms`` have passed since the first one, and runs
the batch function once. Under load the queue already holds items, so batches fill without waiting; a lone request
waits at most ``window_ms``. ``call`` runs any other job that needs the model (Grad-CAM) on the same thread, between
batches, so nothing else ever touches the model concurrently. A failing batch fails its own futures only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Item:
    value: Any
    future: Future


@dataclass
class _Call:
    function: Callable[[], Any]
    future: Future


_STOP = object()


class DynamicBatcher(Generic[T, R]):
    """Runs ``function(list of items) -> list of results`` (same length, same order) on one worker thread."""

    def __init__(self, function: Callable[[list[T]], Sequence[R]], *, max_batch: int = 16, window_ms: float = 10.0,
                 on_batch: Callable[[int], None] | None = None, name: str = "cxrmtl-model") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if window_ms < 0:
            raise ValueError(f"window_ms must be >= 0, got {window_ms}")
        self._function = function
        self.max_batch = int(max_batch)
        self.window = float(window_ms) / 1000.0
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting = 0  # items submitted and not yet taken into a batch (what /metrics shows as queue length)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False
        self._closed = False

    # --------------------------------------------------------------------------------------------- public
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._lock:
            if not self._started:
                self._started = True
                self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Finish the jobs already queued, then stop the worker thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._started:
            self._queue.put(_STOP)
            self._thread.join(timeout)

    @property
    def queue_length(self) -> int:
        """Items waiting for a batch right now."""
        return self._waiting

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, item: T) -> Future:
        """Queue one item; the future resolves to its result (or the batch's exception)."""
        future: Future = Future()
        self._put(_Item(item, future), counted=True)
        return future

    def call(self, function: Callable[[], R]) -> Future:
        """Run ``function()`` on the model thread between batches; the future resolves to its return value."""
        future: Future = Future()
        self._put(_Call(function, future), counted=False)
        return future

    # --------------------------------------------------------------------------------------------- worker
    def _put(self, job: Any, *, counted: bool) -> None:
        with self._lock:
            if self._closed or not self._started:
                raise RuntimeError("the model worker is not running")
            if counted:
                self._waiting += 1
        self._queue.put(job)

    def _take(self, job: Any) -> None:
        if isinstance(job, _Item):
            with self._lock:
                self._waiting -= 1

    def _loop(self) -> None:
        held: Any = None
        while True:
            job = held if held is not None else self._queue.get()
            held = None
            if job is _STOP:
                return
            self._take(job)
            if isinstance(job, _Call):
                self._run_call(job)
                continue
            batch = [job]
            deadline = time.monotonic() + self.window
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(nxt, _Item):  # a call or the stop marker: run this batch first
                    held = nxt
                    break
                self._take(nxt)
                batch.append(nxt)
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Item]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]  # skip abandoned requests
        if not live:
            return
        if self._on_batch is not None:
            self._on_batch(len(live))
        try:
            results = list(self._function([item.value for item in live]))
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
        except BaseException as exc:  # the batch's requests get the error; the worker keeps serving
            log.exception("model batch of %d failed", len(live))
            for item in live:
                item.future.set_exception(exc)
            return
        for item, result in zip(live, results, strict=True):
            item.future.set_result(result)

    @staticmethod
    def _run_call(job: _Call) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.function())
        except BaseException as exc:  # handed to the caller, who decides what it means
            job.future.set_exception(exc)
