"""Pieces of the service without a model: API keys, bind policy, the streaming body limit, Prometheus text."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from cxrmtl.serve.errors import ApiError, ServeError
from cxrmtl.serve.metrics import Histogram, Metrics
from cxrmtl.serve.security import (
    BodyLimitMiddleware,
    check_bind,
    is_loopback,
    key_matches,
    load_api_keys,
    presented_key,
)


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                                ("127.0.0.2", True), ("0.0.0.0", False), ("10.1.2.3", False),
                                                ("::", False), ("example.org", False)])
def test_loopback_and_bind_policy(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    if loopback:
        check_bind(host, ())
    else:
        with pytest.raises(ServeError, match="--api-key-file"):
            check_bind(host, ())
        check_bind(host, ("x" * 16,))


def test_key_file(tmp_path: Path) -> None:
    good = tmp_path / "keys"
    good.write_text("# rotation: old and new\n\n" + "a" * 20 + "\n" + "b" * 32 + "\n")
    assert load_api_keys(good) == ("a" * 20, "b" * 32)
    for text, message in [("", "holds no key"), ("short\n", "shorter than 16"), ("a" * 10 + " " + "b" * 10, "spaces")]:
        path = tmp_path / "bad"
        path.write_text(text)
        with pytest.raises(ServeError, match=message):
            load_api_keys(path)
    with pytest.raises(ServeError, match="cannot read"):
        load_api_keys(tmp_path / "missing")


def test_presented_key_and_comparison() -> None:
    key = "s3cret-key-0123456789"
    basic = base64.b64encode(f"anyone:{key}".encode()).decode()
    assert presented_key([(b"X-API-Key", key.encode())]) == key
    assert presented_key([(b"authorization", f"Bearer {key}".encode())]) == key
    assert presented_key([(b"authorization", f"Basic {basic}".encode())]) == key
    assert presented_key([(b"authorization", b"Basic %%%")]) is None
    assert presented_key([]) is None
    assert key_matches(key, ("other-key-0123456789", key))
    assert not key_matches(key + "x", (key,)) and not key_matches(None, (key,)) and not key_matches("", (key,))


def run_middleware(limit: int, chunks: list[bytes], content_length: int | None = None) -> tuple[int, int, bytes]:
    """(status, chunks pulled from the client, body the app saw) for one request through BodyLimitMiddleware."""
    pulled = 0
    seen = b""
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        if pulled > len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope: dict, receive, send) -> None:
        nonlocal seen
        message = await receive()
        seen = message["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    headers = [(b"content-type", b"multipart/form-data; boundary=x")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "method": "POST", "path": "/v1/studies", "headers": headers}
    asyncio.run(BodyLimitMiddleware(app, max_upload_bytes=limit)(scope, receive, send))
    status = sent[0]["status"]
    if status != 200:
        assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"
    return status, pulled, seen


def test_body_limit_stops_reading_as_soon_as_it_is_passed() -> None:
    chunks = [b"x" * 1000] * 100
    status, pulled, _ = run_middleware(5_500, chunks)
    assert status == 413 and pulled == 6  # the 6th chunk passed the limit; the other 94 were never read
    status, pulled, _ = run_middleware(5_500, chunks, content_length=100_000)
    assert status == 413 and pulled == 0  # a declared length above the limit: not a byte read
    status, _, seen = run_middleware(100_000, chunks)
    assert status == 200 and seen == b"x" * 100_000


def test_prometheus_text() -> None:
    m = Metrics()
    m.observe_request(route="/v1/studies", method="POST", status=201, seconds=0.02)
    m.observe_request(route="/v1/studies", method="POST", status=201, seconds=3.0)
    m.observe_request(route='we"ird\\', method="GET", status=404, seconds=0.001)
    for size in (1, 3, 16, 16):
        m.observe_batch(size)
    text = m.render({"batch_queue_length": ("Waiting images.", 2.0)})
    lines = text.splitlines()
    assert 'cxrmtl_http_requests_total{route="/v1/studies",method="POST",status="201"} 2' in lines
    assert 'cxrmtl_http_requests_total{route="we\\"ird\\\\",method="GET",status="404"} 1' in lines
    assert 'cxrmtl_http_request_duration_seconds_bucket{route="/v1/studies",le="0.025"} 1' in lines
    assert 'cxrmtl_http_request_duration_seconds_bucket{route="/v1/studies",le="+Inf"} 2' in lines
    assert 'cxrmtl_batch_size_bucket{le="4"} 2' in lines and 'cxrmtl_batch_size_bucket{le="16"} 4' in lines
    assert "cxrmtl_batch_size_sum 36" in lines and "cxrmtl_batch_size_count 4" in lines
    assert "# TYPE cxrmtl_batch_queue_length gauge" in lines and "cxrmtl_batch_queue_length 2" in lines
    h = Histogram((1, 2))
    h.observe(5)
    assert h.snapshot() == {"buckets": {"1": 0, "2": 0, "+Inf": 1}, "sum": 5.0, "count": 1}


def test_error_codes() -> None:
    err = ApiError("already_read", "study x:\n already  read")
    assert err.status == 409 and err.message == "study x: already read"
    with pytest.raises(ValueError):
        ApiError("no_such_code", "x")
