"""The real service process (`python -m cxrmtl serve` under uvicorn on a free 127.0.0.1 port): durability across
SIGKILL, the body limit on a streamed upload, and a server log free of patient identifiers."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from servekit import Server, ServeRun, dicom_bytes, multipart, running_server, start_server

pytestmark = pytest.mark.slow  # each starts one or two service processes (~10 s each on a busy 2-core machine)


def noise_png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def post_file(url: str, route: str, data: bytes, *, timeout: float = 60) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    body, content_type = multipart("file", "upload.png", data)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", route, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def get_json(url: str, path: str) -> dict:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200, response.read()
        return json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server(serve_run: ServeRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("server")
    with running_server(serve_run.run, db=base / "db" / "worklist.sqlite", log=base / "server.log",
                        extra=("--backend", "torch", "--max-upload-mb", "0.1")) as srv:
        yield srv


def test_kill_9_loses_no_acknowledged_study(serve_run: ServeRun, tmp_path: Path) -> None:
    db = tmp_path / "db" / "worklist.sqlite"
    srv = start_server(serve_run.run, db=db, log=tmp_path / "first.log", extra=("--backend", "torch"))
    acknowledged: dict[str, str] = {}  # study id -> sha256
    failures: list[str] = []
    stop = threading.Event()
    seeds = iter(range(10_000))
    lock = threading.Lock()

    def uploader() -> None:
        while not stop.is_set():
            with lock:
                seed = next(seeds)
            try:
                status, body = post_file(srv.url, "/v1/studies", noise_png(seed), timeout=30)
            except (OSError, http.client.HTTPException):
                continue  # the server died mid-request: not acknowledged, nothing to check
            if status == 201:
                with lock:
                    acknowledged[body["id"]] = body["image"]["sha256"]
            else:
                failures.append(f"{status} {body}")

    threads = [threading.Thread(target=uploader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while len(acknowledged) < 12 and time.monotonic() < deadline and not failures:
            time.sleep(0.05)
        os.kill(srv.process.pid, signal.SIGKILL)  # uploads still streaming in
        srv.process.wait(10)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures
    assert len(acknowledged) >= 12
    assert srv.process.returncode == -signal.SIGKILL
    with running_server(serve_run.run, db=db, log=tmp_path / "second.log", extra=("--backend", "torch")) as again:
        listing = get_json(again.url, "/v1/studies?status=all&limit=1000")
        stored = {s["id"]: s for s in listing["studies"]}
        missing = sorted(set(acknowledged) - set(stored))
        assert not missing, f"{len(missing)} acknowledged studies lost: {missing}"
        for sid, sha in acknowledged.items():
            assert stored[sid]["image"]["sha256"] == sha and stored[sid]["urgency"]["level"]
            full = get_json(again.url, f"/v1/studies/{sid}")
            assert len(full["result"]["findings"]) == 14
        # Every stored row (acknowledged or committed just before the kill) has its image file.
        data = db.with_name("worklist-data") / "images"
        for s in stored.values():
            assert (data / s["image"]["sha256"][:2] / f"{s['image']['sha256']}.png").is_file()
        assert len(stored) >= len(acknowledged)


def test_streamed_upload_is_refused_as_soon_as_it_passes_the_limit(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    limit = int(0.1 * 1024 * 1024)
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/studies HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=B\r\n\r\n")
        reply = b""
        sock.settimeout(0.05)
        chunk = b"\0" * 8192
        for _ in range(4 * limit // len(chunk)):  # up to 4x the limit, unless the answer comes first
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # the server closed the connection after answering
                break
            sent += len(chunk)
            try:
                reply += sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                continue
            if b"\r\n\r\n" in reply:
                break
        sock.settimeout(10)
        while b"}" not in reply:
            more = sock.recv(65536)
            if not more:
                break
            reply += more
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b'"payload_too_large"' in reply
    assert sent < 2 * limit  # answered while the client was still sending


def test_server_log_has_no_patient_identifiers(server: Server, serve_run: ServeRun) -> None:
    pixels = np.asarray(Image.open(serve_run.studies["b"])).astype(np.uint8)
    data = dicom_bytes(pixels, PatientID="PID-99887766", StudyInstanceUID="1.2.3.99887766", StudyDate="20230405",
                       PatientName="Roe^Richard")
    status, body = post_file(server.url, "/v1/studies", data)
    assert status == 201 and body["dicom"]["patient_id"] == "PID-99887766"
    assert get_json(server.url, f"/v1/studies/{body['id']}")["dicom"]["study_date"] == "2023-04-05"
    time.sleep(0.3)
    log = server.output()
    assert body["id"] in log  # the service logs the study by its own id ...
    for secret in ("99887766", "Roe", "Richard", "20230405", "2023-04-05"):
        assert secret not in log, secret  # ... and never an identifier from the file
