"""The HTTP API on a tiny trained run: predict, the worklist in urgency order, pictures, read, health, metrics."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from servekit import ServeRun

from cxrmtl import labels as L
from cxrmtl.serve.errors import ERRORS


def upload(client: TestClient, path: Path | bytes, *, route: str = "/v1/studies", name: str = "x.png"):
    data = path if isinstance(path, bytes) else path.read_bytes()
    return client.post(route, files={"file": (name, data, "image/png")})


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def test_predict_returns_every_output_urgency_and_heatmap_links(client: TestClient, serve_run: ServeRun) -> None:
    crit = next(n for n, level in serve_run.expected.items() if level == "critical")
    r = upload(client, serve_run.studies[crit], route="/v1/predict")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["result"]) == {"findings", "abnormal", "age_years", "sex", "view", "calibrated",
                                   "threshold_method"}
    assert list(body["result"]["findings"]) == list(L.FINDINGS)
    assert body["result"]["findings"]["Pneumothorax"]["positive"] is True
    assert body["urgency"]["level"] == "critical" and body["urgency"]["top_finding"] == "Pneumothorax"
    assert body["image"] == {"format": "png", "width": 256, "height": 256, "sha256": body["image"]["sha256"]}
    assert body["disclaimer"] == "Decision support, not a diagnosis" and body["model"]["data_kind"] == "phantom"
    assert set(body["heatmaps"]) == set(L.FINDINGS)
    heat = client.get(body["heatmaps"]["Pneumothorax"])
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
    assert png_size(heat.content) == (256, 256)
    layer = client.get(body["heatmaps"]["Pneumothorax"] + "?mode=layer")
    with Image.open(io.BytesIO(layer.content)) as im:
        assert im.mode == "RGBA" and im.size == (256, 256)
    # Nothing stored: the worklist is still empty.
    assert client.get("/v1/studies?status=all").json()["count"] == 0


def test_worklist_orders_by_urgency_and_keeps_results(client: TestClient, serve_run: ServeRun) -> None:
    ids = {}
    for name in ("c", "b", "a"):  # routine first: arrival order differs from urgency order
        r = upload(client, serve_run.studies[name])
        assert r.status_code == 201, r.text
        assert r.headers["location"] == f"/v1/studies/{r.json()['id']}"
        ids[name] = r.json()["id"]
        assert r.json()["urgency"]["level"] == serve_run.expected[name]
    listing = client.get("/v1/studies").json()
    assert listing["counts"] == {"unread": 3, "read": 0} and listing["count"] == 3
    levels = [s["urgency"]["level"] for s in listing["studies"]]
    assert levels == ["critical", "urgent", "routine"]
    assert [s["rank"] for s in listing["studies"]] == [1, 2, 3]
    first = client.get(f"/v1/studies/{listing['studies'][0]['id']}").json()
    assert first["rank"] == 1 and first["status"] == "unread" and first["result"]["findings"]["Pneumothorax"]
    assert first["image"]["format"] == "png" and first["dicom"] is None
    image = client.get(first["links"]["image"])
    assert image.status_code == 200 and png_size(image.content) == (256, 256)
    heat = client.get(first["links"]["heatmaps"]["Effusion"])
    assert heat.status_code == 200 and png_size(heat.content) == (256, 256)
    again = client.get(first["links"]["heatmaps"]["Effusion"])  # cached file now
    assert again.content == heat.content
    # read -> leaves the unread list; read list and all list
    r = client.post(f"/v1/studies/{first['id']}/read", json={"reader": "AB"})
    assert r.status_code == 200 and r.json()["status"] == "read" and r.json()["reader"] == "AB"
    unread = client.get("/v1/studies?status=unread").json()
    assert [s["urgency"]["level"] for s in unread["studies"]] == ["urgent", "routine"]
    read = client.get("/v1/studies?status=read").json()
    assert [s["id"] for s in read["studies"]] == [first["id"]] and read["studies"][0]["rank"] is None
    assert client.get("/v1/studies?status=all&limit=2").json()["returned"] == 2


def test_upper_limit_puts_the_overdue_study_first(make_client, serve_run: ServeRun) -> None:
    client = make_client(upper_limit_minutes=0.01)  # 0.6 s
    routine = next(n for n, level in serve_run.expected.items() if level == "routine")
    crit = next(n for n, level in serve_run.expected.items() if level == "critical")
    old = upload(client, serve_run.studies[routine]).json()["id"]
    time.sleep(1.0)
    upload(client, serve_run.studies[crit])
    studies = client.get("/v1/studies").json()["studies"]
    assert studies[0]["id"] == old and studies[0]["overdue"] is True and studies[1]["overdue"] is False


def test_duplicates_return_the_stored_study(client: TestClient, serve_run: ServeRun) -> None:
    first = upload(client, serve_run.studies["a"])
    second = upload(client, serve_run.studies["a"], name="other-name.png")
    assert first.status_code == 201 and second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert client.get("/v1/studies?status=all").json()["count"] == 1


def test_client_file_names_never_reach_the_disk(client: TestClient, serve_run: ServeRun, tmp_path: Path) -> None:
    r = upload(client, serve_run.studies["b"], name="../../etc/passwd")
    assert r.status_code == 201
    service = client.app.state.service
    files = [p for p in service.store.data.rglob("*") if p.is_file()]
    sha = r.json()["image"]["sha256"]
    assert [p.name for p in files] == [f"{sha}.png"]
    assert not any("passwd" in str(p) for p in tmp_path.rglob("*"))


def test_health_metrics_info_and_docs(client: TestClient, serve_run: ServeRun) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "model_loaded": True, "db_writable": True}
    upload(client, serve_run.studies["a"])
    text = client.get("/metrics").text
    assert 'cxrmtl_http_requests_total{route="/v1/studies",method="POST",status="201"} 1' in text
    assert "cxrmtl_batch_size_count 1" in text and "cxrmtl_batch_queue_length 0" in text
    assert 'cxrmtl_http_request_duration_seconds_bucket{route="/v1/studies",le="+Inf"} 1' in text
    assert "cxrmtl_worklist_unread 1" in text
    info = client.get("/v1/info").json()
    assert info["model"]["data_kind"] == "phantom" and info["findings"] == list(L.FINDINGS)
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/studies", "/v1/studies/{study_id}/read", "/healthz"} <= set(spec["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/v1/studies/{study_id}/heatmap/{finding}" in docs.text
    assert "cdn" not in docs.text.lower() and "http://" not in docs.text and "https://" not in docs.text
    page = client.get("/")
    assert page.status_code == 200 and "Decision support, not a diagnosis" in page.text
    assert "content-security-policy" in page.headers and "access-control-allow-origin" not in page.headers
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_cors_is_closed(client: TestClient) -> None:
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    r = client.options("/v1/studies", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/v1/studies", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_a_restarted_store_keeps_everything(make_client, serve_run: ServeRun, tmp_path: Path) -> None:
    db = tmp_path / "keep" / "worklist.sqlite"
    client = make_client(db=db)
    sid = upload(client, serve_run.studies["b"]).json()["id"]
    client.post(f"/v1/studies/{sid}/read")
    client.__exit__(None, None, None)
    again = make_client(db=db)
    study = again.get(f"/v1/studies/{sid}").json()
    assert study["status"] == "read" and study["urgency"]["level"] == serve_run.expected["b"]


def test_jpeg_and_16_bit_png_are_scored(client: TestClient, serve_run: ServeRun) -> None:
    gray = np.asarray(Image.open(serve_run.studies["c"]))
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="JPEG", quality=90)
    r = upload(client, buf.getvalue(), name="scan.jpg")
    assert r.status_code == 201 and r.json()["image"]["format"] == "jpeg"
    wide = (np.random.default_rng(0).random((300, 500)) * 60000).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    r = upload(client, buf.getvalue())
    assert r.status_code == 201 and r.json()["image"]["width"] == 500
    sid = r.json()["id"]
    assert png_size(client.get(f"/v1/studies/{sid}/image").content) == (500, 300)
    assert png_size(client.get(f"/v1/studies/{sid}/heatmap/Mass").content) == (500, 300)


def test_error_table_is_consistent() -> None:
    assert all(400 <= status < 600 for status, _ in ERRORS.values())


def test_no_request_logs_a_500(client: TestClient, serve_run: ServeRun, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        upload(client, serve_run.studies["a"])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_onnx_backend_serves_predictions_and_heatmaps(serve_run: ServeRun, tmp_path: Path) -> None:
    """ONNX Runtime answers the predictions; Grad-CAM still runs on the torch network loaded with the run."""
    pytest.importorskip("onnxruntime")
    from cxrmtl.infer.engine import Predictor
    from cxrmtl.serve.app import create_app
    from cxrmtl.serve.service import Service
    from cxrmtl.serve.store import Store

    predictor = Predictor.from_run(serve_run.run, backend="onnx")
    assert predictor.backend == "onnx"
    with TestClient(create_app(Service(predictor, Store(tmp_path / "w.sqlite")))) as client:
        r = upload(client, serve_run.studies["a"])
        assert r.status_code == 201 and r.json()["urgency"]["level"] == serve_run.expected["a"]
        heat = client.get(f"/v1/studies/{r.json()['id']}/heatmap/Pneumothorax?mode=layer")
        assert heat.status_code == 200 and png_size(heat.content) == (256, 256)
        assert client.get("/v1/info").json()["model"]["backend"] == "onnx"
