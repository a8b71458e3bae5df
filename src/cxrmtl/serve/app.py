"""HTTP routes of ``cxrmtl serve`` (FastAPI): prediction, the worklist, pictures, health, metrics, the page.

``create_app(service)`` wires a ready ``Service`` (model loaded once, store open) into a FastAPI app with the
middlewares of ``security`` and ``metrics``; ``build_service`` loads both from a run folder. Every error answer is
``{"error": {"code", "message"}}`` with the status of ``errors.ERRORS``. OpenAPI: ``/openapi.json`` and an offline
reference page at ``/docs`` (FastAPI's Swagger UI loads from a CDN, so it is switched off). API guide: docs/serve.md.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from cxrmtl import __version__
from cxrmtl.serve.apidocs import docs_html
from cxrmtl.serve.errors import ApiError, error_body
from cxrmtl.serve.imaging import HEATMAP_MODES
from cxrmtl.serve.metrics import MetricsMiddleware
from cxrmtl.serve.security import ApiKeyMiddleware, BodyLimitMiddleware, SecurityHeadersMiddleware
from cxrmtl.serve.service import DISCLAIMER, MAX_LIST_LIMIT, STATUS_FILTERS, ServeSettings, Service

log = logging.getLogger(__name__)
STATIC = resources.files("cxrmtl.serve") / "static"
PNG = "image/png"
# Mapping of framework errors (Starlette/FastAPI raise them before our code runs) to our codes.
HTTP_STATUS_CODES: dict[int, str] = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


class ReadRequest(BaseModel):
    """Optional body of POST /v1/studies/{id}/read."""

    model_config = ConfigDict(extra="forbid")
    reader: str | None = Field(default=None, min_length=1, max_length=64,
                               description="Who read the study (initials or staff id; not a patient identifier).")


def _json_error(error: ApiError) -> JSONResponse:
    return Response(error_body(error.code, error.message), status_code=error.status, media_type="application/json",
                    headers=error.headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path")]
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _json_error(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _json_error(ApiError("invalid_request", _validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = HTTP_STATUS_CODES.get(exc.status_code, "invalid_request")
        text = {"not_found": f"{request.url.path[:200]}: no such route",
                "method_not_allowed": f"{request.method} is not allowed on {request.url.path[:200]}"}.get(code)
        return _json_error(ApiError(code, text or str(exc.detail)))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s: %s", request.method, request.url.path, type(exc).__name__,
                  exc_info=exc)
        return _json_error(ApiError("internal_error", "internal error (logged by the service)"))


def create_app(service: Service) -> FastAPI:
    """The FastAPI application around a ready ``Service`` (started on startup, closed on shutdown)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="cxrmtl triage service", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", lifespan=lifespan,
                  description=f"{DISCLAIMER}. Scores chest X-rays as they arrive and keeps the reading worklist.")
    app.state.service = service
    _install_error_handlers(app)
    _add_routes(app, service)
    settings = service.settings
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return app


StudyId = Annotated[str, PathParam(description="Study id: 32 lowercase hexadecimal characters.")]
Mode = Annotated[str, Query(pattern="^(overlay|layer)$",
                            description="overlay: the image with the heatmap blended in; layer: the heatmap alone, "
                                        "transparent, to lay over /image.")]


def _add_routes(app: FastAPI, service: Service) -> None:
    responses: dict[int | str, dict[str, Any]] = {422: {"description": "invalid request (JSON error body)"}}

    @app.post("/v1/predict", tags=["predict"], responses=responses)
    async def predict(file: Annotated[UploadFile, File(description="PNG, JPEG or DICOM file.")]) -> dict[str, Any]:
        """Every task output of one image, its urgency and heatmap links (kept in memory for a while); the
        image is not stored."""
        return await service.predict(await file.read())

    @app.post("/v1/studies", tags=["worklist"], status_code=201, responses=responses)
    async def add_study(file: Annotated[UploadFile, File(description="PNG, JPEG or DICOM file.")]) -> Response:
        """Score a new study and add it to the worklist (201); a duplicate (same bytes or same DICOM
        StudyInstanceUID) returns the stored study (200). Answered after the database commit."""
        study, created = await service.add_study(await file.read())
        return JSONResponse(study, status_code=201 if created else 200,
                            headers={"Location": study["links"]["self"]})

    @app.get("/v1/studies", tags=["worklist"], responses=responses)
    async def list_studies(
        status: Annotated[str, Query(pattern=f"^({'|'.join(STATUS_FILTERS)})$",
                                     description="unread (default), read or all.")] = "unread",
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 200,
    ) -> dict[str, Any]:
        """The worklist: unread studies in reading order (rank 1 first), then read ones (latest first)."""
        return await service.studies(status=status, limit=limit)

    @app.get("/v1/studies/{study_id}", tags=["worklist"], responses=responses)
    async def get_study(study_id: StudyId) -> dict[str, Any]:
        """One study with its full result, urgency and links."""
        return await service.study(study_id)

    @app.get("/v1/studies/{study_id}/image", tags=["worklist"], response_class=Response,
             responses={200: {"content": {PNG: {}}}})
    async def study_image(study_id: StudyId) -> Response:
        """The stored image as an 8-bit PNG for display (at most 1024 pixels on a side)."""
        return Response(await service.study_image(study_id), media_type=PNG)

    @app.get("/v1/studies/{study_id}/heatmap/{finding}", tags=["worklist"], response_class=Response,
             responses={200: {"content": {PNG: {}}}})
    async def study_heatmap(study_id: StudyId, finding: str, mode: Mode = "overlay") -> Response:
        """Grad-CAM heatmap of one finding, in the frame of /image (computed once, then kept)."""
        return Response(await service.study_heatmap(study_id, finding, mode=mode), media_type=PNG)

    @app.post("/v1/studies/{study_id}/read", tags=["worklist"], responses=responses)
    async def mark_read(study_id: StudyId, body: ReadRequest | None = None) -> dict[str, Any]:
        """Mark a study as read (409 when it already is); it leaves the unread worklist."""
        return await service.mark_read(study_id, reader=body.reader if body is not None else None)

    @app.get("/v1/predictions/{prediction_id}/heatmap/{finding}", tags=["predict"], response_class=Response,
             responses={200: {"content": {PNG: {}}}})
    async def prediction_heatmap(prediction_id: str, finding: str, mode: Mode = "overlay") -> Response:
        """Heatmap link of a /v1/predict answer (works for a limited time; computed on request)."""
        return Response(await service.prediction_heatmap(prediction_id, finding, mode=mode), media_type=PNG)

    @app.get("/v1/info", tags=["service"])
    async def info() -> dict[str, Any]:
        """The model served and the service's settings (what the page shows in its header)."""
        return {"model": service.model_json(), "findings": list(service.predictor.finding_names),
                "disclaimer": DISCLAIMER, "upper_limit_minutes": service.settings.upper_limit_minutes,
                "max_upload_bytes": service.settings.max_upload_bytes, "heatmap_modes": list(HEATMAP_MODES),
                "version": __version__}

    @app.get("/healthz", tags=["service"])
    async def healthz() -> Response:
        """200 when the model worker runs and the database takes writes, else 503 (no API key needed)."""
        checks = await service.health()
        if all(checks.values()):
            return JSONResponse({"status": "ok", **checks})
        failed = ", ".join(k for k, ok in checks.items() if not ok)
        body = {"status": "unavailable", **checks, "error": {"code": "unavailable", "message": f"failed: {failed}"}}
        return JSONResponse(body, status_code=503)

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus text format: requests, latency, batch sizes, queue length, worklist size."""
        return PlainTextResponse(service.metrics.render(await service.gauges()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_html(app.openapi()))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(Path(str(STATIC / "index.html")), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")


def build_service(run: Path, *, db: Path, settings: ServeSettings, backend: str = "auto", device: str = "cpu"
                  ) -> Service:
    """Load the run once (``Predictor.from_run``) and open the worklist store."""
    from cxrmtl.infer.engine import Predictor
    from cxrmtl.serve.store import Store

    store = Store(db)  # first: a database held by another service fails before the model loads
    try:
        predictor = Predictor.from_run(run, backend=backend, device=device, which=settings.checkpoint)
        return Service(predictor, store, settings=settings)
    except BaseException:
        store.close()
        raise
