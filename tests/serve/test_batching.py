"""Dynamic batching: concurrent items share one call, a lone item waits at most the window, errors stay local."""

from __future__ import annotations

import threading
import time
from concurrent.futures import wait

import pytest

from cxrmtl.serve.batching import DynamicBatcher


def test_concurrent_items_form_batches_and_results_keep_their_order() -> None:
    calls: list[list[int]] = []
    sizes: list[int] = []
    release = threading.Event()

    def square(items: list[int]) -> list[int]:
        calls.append(list(items))
        release.wait(5)  # hold the first batch so the others queue up behind it
        return [x * x for x in items]

    batcher = DynamicBatcher(square, max_batch=4, window_ms=50, on_batch=sizes.append)
    batcher.start()
    try:
        futures = [batcher.submit(i) for i in range(10)]
        time.sleep(0.2)
        assert batcher.queue_length >= 1
        release.set()
        wait(futures, timeout=10)
        assert [f.result() for f in futures] == [i * i for i in range(10)]
    finally:
        batcher.close()
    assert all(len(c) <= 4 for c in calls) and sum(map(len, calls)) == 10
    assert max(sizes) == 4 and len(calls) < 10  # batches were formed
    assert batcher.queue_length == 0


def test_a_lone_item_waits_at_most_the_window() -> None:
    batcher = DynamicBatcher(lambda xs: xs, max_batch=16, window_ms=30)
    batcher.start()
    try:
        batcher.submit(0).result(5)  # warm the thread
        start = time.perf_counter()
        assert batcher.submit(1).result(5) == 1
        assert time.perf_counter() - start < 1.0
    finally:
        batcher.close()


def test_a_failing_batch_fails_its_own_futures_only() -> None:
    def picky(items: list[int]) -> list[int]:
        if -1 in items:
            raise ValueError("bad item")
        return items

    batcher = DynamicBatcher(picky, max_batch=1, window_ms=0)
    batcher.start()
    try:
        bad = batcher.submit(-1)
        good = batcher.submit(7)
        with pytest.raises(ValueError, match="bad item"):
            bad.result(5)
        assert good.result(5) == 7 and batcher.alive
    finally:
        batcher.close()


def test_calls_run_on_the_model_thread_between_batches() -> None:
    seen: list[str] = []

    def record(items: list[int]) -> list[int]:
        seen.append(threading.current_thread().name)
        return items

    batcher = DynamicBatcher(record, max_batch=2, window_ms=1, name="model-thread")
    batcher.start()
    try:
        assert batcher.call(lambda: threading.current_thread().name).result(5) == "model-thread"
        assert batcher.submit(1).result(5) == 1
        with pytest.raises(KeyError):
            batcher.call(lambda: {}["missing"]).result(5)
        assert batcher.submit(2).result(5) == 2
    finally:
        batcher.close()
    assert set(seen) == {"model-thread"}


def test_cancelled_items_are_skipped_and_closed_batcher_refuses() -> None:
    hold = threading.Event()
    ran: list[list[int]] = []

    def slow(items: list[int]) -> list[int]:
        ran.append(items)
        hold.wait(5)
        return items

    batcher = DynamicBatcher(slow, max_batch=1, window_ms=0)
    batcher.start()
    first = batcher.submit(1)
    time.sleep(0.1)
    second = batcher.submit(2)
    assert second.cancel()
    hold.set()
    assert first.result(5) == 1
    batcher.close()
    assert ran == [[1]]
    with pytest.raises(RuntimeError, match="not running"):
        batcher.submit(3)
    with pytest.raises(ValueError):
        DynamicBatcher(lambda xs: xs, max_batch=0)
