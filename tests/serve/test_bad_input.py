"""A corpus of bad requests: each gets its documented 4xx and a JSON error body, and the service keeps serving.

The statuses come from ``serve.errors.ERRORS`` (the table docs/serve.md shows), so a test here fails when a route
answers something undocumented. Nothing here may produce a 500.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from servekit import ServeRun, dicom_bytes

from cxrmtl.data.imageio import PNG_MAGIC
from cxrmtl.serve.errors import ERRORS

KEY = "k" * 12 + "-serve-test-key"


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny file whose header claims a huge image (a decompression bomb), with a valid IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return PNG_MAGIC + png_chunk(b"IHDR", ihdr) + idat + png_chunk(b"IEND", b"")


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def corrupt_idat_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    return PNG_MAGIC + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"not zlib data" * 8) + png_chunk(b"IEND", b"")


@dataclass(frozen=True)
class Case:
    name: str
    code: str
    send: Callable[[TestClient, dict[str, Any]], Any]


def file_post(route: str, data: bytes, name: str = "x.png", field: str = "file") -> Callable[..., Any]:
    return lambda c, ctx: c.post(route, files={field: (name, data, "image/png")})


def build_cases(good_png: bytes) -> list[Case]:
    text = b"this is a text file, not an image\n" * 20
    good_jpeg_buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 120, np.uint8)).save(good_jpeg_buf, format="JPEG")
    sid = lambda ctx: ctx["study"]  # noqa: E731 -- a study stored before the corpus runs
    return [
        Case("empty body", "invalid_request", lambda c, ctx: c.post("/v1/studies")),
        Case("missing field (other form field only)", "invalid_request",
             lambda c, ctx: c.post("/v1/studies", data={"note": "hello"})),
        Case("wrong field name", "invalid_request", file_post("/v1/studies", good_png, field="image")),
        Case("wrong type: text where a file is expected", "invalid_request",
             lambda c, ctx: c.post("/v1/studies", data={"file": "not a file"})),
        Case("JSON instead of multipart", "invalid_request",
             lambda c, ctx: c.post("/v1/predict", json={"file": base64.b64encode(good_png).decode()})),
        Case("malformed multipart body", "invalid_request",
             lambda c, ctx: c.post("/v1/studies", content=b"--xyz\r\ngarbage",
                                   headers={"content-type": "multipart/form-data; boundary=abc"})),
        Case("empty file", "empty_file", file_post("/v1/studies", b"")),
        Case("truncated PNG", "unreadable_image", file_post("/v1/studies", good_png[: len(good_png) // 2])),
        Case("PNG with corrupt pixel data", "unreadable_image", file_post("/v1/predict", corrupt_idat_png())),
        Case("1x1 PNG", "unreadable_image", file_post("/v1/studies", png_bytes(np.zeros((1, 1), np.uint8)))),
        Case("decompression bomb PNG header", "image_too_large", file_post("/v1/studies", bomb_png())),
        Case("decompression bomb on predict", "image_too_large", file_post("/v1/predict", bomb_png(20_000, 20))),
        Case("truncated JPEG", "unreadable_image",
             file_post("/v1/predict", good_jpeg_buf.getvalue()[:200], name="a.jpg")),
        Case("DICOM without pixel data", "unreadable_image",
             file_post("/v1/studies", dicom_bytes(None, PatientID="X1"), name="a.dcm")),
        Case("DICOM preamble then garbage", "unreadable_image",
             file_post("/v1/studies", b"\0" * 128 + b"DICM" + b"\xff" * 300, name="a.dcm")),
        Case("text file named .png", "unsupported_media_type", file_post("/v1/studies", text, name="scan.png")),
        Case("random bytes", "unsupported_media_type",
             file_post("/v1/predict", np.random.default_rng(0).bytes(4096), name="x.dcm")),
        Case("path-traversal file name", "unsupported_media_type",
             file_post("/v1/studies", text, name="../../etc/passwd")),
        Case("null bytes in the file name", "unsupported_media_type",
             file_post("/v1/studies", text, name="a\x00b.png")),
        Case("huge JSON body", "payload_too_large",
             lambda c, ctx: c.post(f"/v1/studies/{sid(ctx)}/read", content=b'{"reader": "' + b"x" * 2_000_000 + b'"}',
                                   headers={"content-type": "application/json"})),
        Case("unknown study id", "study_not_found", lambda c, ctx: c.get("/v1/studies/" + "0" * 32)),
        Case("malformed study id", "invalid_id", lambda c, ctx: c.get("/v1/studies/not-an-id")),
        Case("upper-case study id", "invalid_id", lambda c, ctx: c.get("/v1/studies/" + sid(ctx).upper())),
        Case("path traversal in the URL", "not_found",
             lambda c, ctx: c.get("/v1/studies/..%2F..%2Fetc%2Fpasswd/image")),
        Case("image of an unknown study", "study_not_found", lambda c, ctx: c.get(f"/v1/studies/{'a' * 32}/image")),
        Case("unknown finding in heatmap URL", "unknown_finding",
             lambda c, ctx: c.get(f"/v1/studies/{sid(ctx)}/heatmap/Broken_Heart")),
        Case("finding with a path in heatmap URL", "unknown_finding",
             lambda c, ctx: c.get(f"/v1/studies/{sid(ctx)}/heatmap/..%5C..%5Cboot.ini")),
        Case("bad heatmap mode", "invalid_request",
             lambda c, ctx: c.get(f"/v1/studies/{sid(ctx)}/heatmap/Mass?mode=svg")),
        Case("expired prediction link", "prediction_not_found",
             lambda c, ctx: c.get(f"/v1/predictions/{'b' * 32}/heatmap/Mass")),
        Case("malformed prediction id", "invalid_id", lambda c, ctx: c.get("/v1/predictions/xyz/heatmap/Mass")),
        Case("GET on a POST route", "method_not_allowed", lambda c, ctx: c.get("/v1/predict")),
        Case("DELETE a study", "method_not_allowed", lambda c, ctx: c.delete(f"/v1/studies/{sid(ctx)}")),
        Case("unknown route", "not_found", lambda c, ctx: c.get("/v1/nothing-here")),
        Case("bad status filter", "invalid_request", lambda c, ctx: c.get("/v1/studies?status=deleted")),
        Case("limit of the wrong type", "invalid_request", lambda c, ctx: c.get("/v1/studies?limit=many")),
        Case("limit zero", "invalid_request", lambda c, ctx: c.get("/v1/studies?limit=0")),
        Case("reader of the wrong type", "invalid_request",
             lambda c, ctx: c.post(f"/v1/studies/{sid(ctx)}/read", json={"reader": 5})),
        Case("unknown field in the read body", "invalid_request",
             lambda c, ctx: c.post(f"/v1/studies/{sid(ctx)}/read", json={"status": "deleted"})),
        Case("read body that is not JSON", "invalid_request",
             lambda c, ctx: c.post(f"/v1/studies/{sid(ctx)}/read", content=b"{not json",
                                   headers={"content-type": "application/json"})),
        Case("read an unknown study", "study_not_found", lambda c, ctx: c.post(f"/v1/studies/{'c' * 32}/read")),
        Case("read twice", "already_read", lambda c, ctx: c.post(f"/v1/studies/{ctx['read']}/read")),
    ]


def check_error(response: Any, code: str, name: str) -> None:
    status = ERRORS[code][0]
    assert response.status_code == status, f"{name}: {response.status_code} {response.text[:300]}"
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, f"{name}: {body}"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], name
    assert response.headers["content-type"].startswith("application/json"), name


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")  # pydicom's own complaint about the garbage DICOM
def test_bad_request_corpus(make_client: Callable[..., TestClient], serve_run: ServeRun) -> None:
    client = make_client()
    good = serve_run.studies["a"].read_bytes()
    stored = client.post("/v1/studies", files={"file": ("a.png", good, "image/png")}).json()["id"]
    read = client.post("/v1/studies", files={"file": ("b.png", serve_run.studies["b"].read_bytes(), "image/png")})
    read_id = read.json()["id"]
    assert client.post(f"/v1/studies/{read_id}/read").status_code == 200
    cases = build_cases(good)
    assert len(cases) >= 25
    ctx = {"study": stored, "read": read_id}
    for case in cases:
        check_error(case.send(client, ctx), case.code, case.name)
    # Still serving: health, a good upload scored, nothing half-stored by the bad ones.
    assert client.get("/healthz").status_code == 200
    ok = client.post("/v1/predict", files={"file": ("c.png", serve_run.studies["c"].read_bytes(), "image/png")})
    assert ok.status_code == 200 and ok.json()["urgency"]["level"] == serve_run.expected["c"]
    assert client.get("/v1/studies?status=all").json()["count"] == 2
    metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics
    service = client.app.state.service
    assert not list(service.store.tmp_dir.iterdir())  # decoding temp files are gone


def test_upload_limit_is_enforced_while_reading(make_client: Callable[..., TestClient], serve_run: ServeRun) -> None:
    client = make_client(max_upload_bytes=60_000)
    big = serve_run.studies["a"].read_bytes() + b"\0" * 70_000
    check_error(client.post("/v1/studies", files={"file": ("a.png", big, "image/png")}), "payload_too_large",
                "declared length")

    def chunks():  # no Content-Length: chunked transfer (TestClient buffers it; test_middleware checks the early stop)
        yield b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(100):
            yield b"\0" * 1000

    response = client.post("/v1/studies", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=B"})
    check_error(response, "payload_too_large", "streamed body")
    small = serve_run.studies["c"].read_bytes()
    assert len(small) < 60_000
    assert client.post("/v1/studies", files={"file": ("c.png", small, "image/png")}).status_code == 201


def test_api_key_mode(make_client: Callable[..., TestClient], serve_run: ServeRun) -> None:
    client = make_client(api_keys=(KEY,))
    png = serve_run.studies["c"].read_bytes()
    no_key = client.get("/v1/studies")
    check_error(no_key, "unauthorized", "no key")
    assert no_key.headers["www-authenticate"].startswith("Basic")
    check_error(client.get("/v1/studies", headers={"X-API-Key": KEY[:-1] + "x"}), "unauthorized", "wrong key")
    check_error(client.get("/v1/studies", headers={"Authorization": "Bearer nope"}), "unauthorized", "wrong bearer")
    check_error(client.get("/", headers={"Authorization": "Basic !!!"}), "unauthorized", "malformed basic")
    for path in ("/", "/metrics", "/openapi.json", "/docs", "/static/app.js", "/v1/info"):
        check_error(client.get(path), "unauthorized", path)
    check_error(client.post("/v1/predict", files={"file": ("c.png", png, "image/png")}), "unauthorized", "predict")
    assert client.get("/healthz").status_code == 200  # the one open route
    assert client.get("/v1/studies", headers={"X-API-Key": KEY}).status_code == 200
    assert client.get("/v1/studies", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    basic = base64.b64encode(f"radiologist:{KEY}".encode()).decode()
    assert client.get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    r = client.post("/v1/studies", files={"file": ("c.png", png, "image/png")}, headers={"X-API-Key": KEY})
    assert r.status_code == 201


@pytest.mark.parametrize("name", ["a\x00b.png", "../../etc/passwd", "C:\\Windows\\x.png", "é.png", "x" * 255])
def test_any_file_name_is_ignored(client: TestClient, serve_run: ServeRun, name: str) -> None:
    r = client.post("/v1/predict", files={"file": (name, serve_run.studies["c"].read_bytes(), "text/plain")})
    assert r.status_code == 200, r.text
