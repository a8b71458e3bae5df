"""Prometheus text exposition (format 0.0.4) of the service's counters, written by hand: no client library needed.

What is counted: HTTP requests by route template, method and status; request latency per route (histogram);
the sizes of the batches dynamic batching formed (histogram); gauges supplied at render time (queue length,
worklist size). Route labels are templates (``/v1/studies/{study_id}``), never raw paths, so label cardinality
stays bounded whatever clients send; paths that match no route count as ``unmatched``.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

# Latency buckets (seconds): 5 ms .. 30 s, covering a cached GET to a Grad-CAM on a big model on a busy CPU.
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Batch-size buckets: powers of two up to the largest --max-batch anyone should use on one model.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
PREFIX = "cxrmtl"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs.items()) + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics: bucket ``le`` counts observations <= le)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # last slot: above every bucket
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: Mapping[str, str]) -> list[str]:
        out, running = [], 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            running += n
            out.append(f"{name}_bucket{_labels({**labels, 'le': _number(bound)})} {running}")
        out.append(f"{name}_sum{_labels(labels)} {_number(self.sum)}")
        out.append(f"{name}_count{_labels(labels)} {self.count}")
        return out

    def snapshot(self) -> dict[str, Any]:
        """Plain counts per bucket (not cumulative), for benchmarks and tests."""
        keys = [*(_number(b) for b in self.buckets), "+Inf"]
        return {"buckets": dict(zip(keys, self.counts, strict=True)), "sum": self.sum, "count": self.count}


class Metrics:
    """Thread-safe counters of one service process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.batches = Histogram(BATCH_BUCKETS)

    def observe_request(self, *, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (route, method, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batches.observe(size)

    def render(self, gauges: Mapping[str, tuple[str, float]] | None = None) -> str:
        """The exposition text; ``gauges`` maps a metric name (without prefix) to (help, value)."""
        with self._lock:
            lines = [f"# HELP {PREFIX}_http_requests_total HTTP requests by route template, method and status.",
                     f"# TYPE {PREFIX}_http_requests_total counter"]
            for (route, method, status), n in sorted(self.requests.items()):
                lines.append(f"{PREFIX}_http_requests_total"
                             f"{_labels({'route': route, 'method': method, 'status': status})} {n}")
            lines += [f"# HELP {PREFIX}_http_request_duration_seconds Time from request start to response end.",
                      f"# TYPE {PREFIX}_http_request_duration_seconds histogram"]
            for route, hist in sorted(self.latency.items()):
                lines += hist.lines(f"{PREFIX}_http_request_duration_seconds", {"route": route})
            lines += [f"# HELP {PREFIX}_batch_size Images per forward pass formed by dynamic batching.",
                      f"# TYPE {PREFIX}_batch_size histogram"]
            lines += self.batches.lines(f"{PREFIX}_batch_size", {})
        for name, (text, value) in dict(gauges or {}).items():
            lines += [f"# HELP {PREFIX}_{name} {text}", f"# TYPE {PREFIX}_{name} gauge",
                      f"{PREFIX}_{name} {_number(value)}"]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """ASGI middleware: counts every HTTP request (route template, method, status) and its latency."""

    def __init__(self, app: Any, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(route=route, method=scope.get("method", "?"), status=status,
                                         seconds=time.perf_counter() - start)
