"""The service's error vocabulary: every error a client can cause has a code, an HTTP status and one JSON shape.

Body of every error response: ``{"error": {"code": "<code>", "message": "<what is wrong, one line>"}}``. The table
``ERRORS`` is the single source for the status of each code; docs/serve.md lists it and the bad-input test checks
every response against it. No module here imports FastAPI: middlewares send errors as plain ASGI messages.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cxrmtl.errors import CxrmtlError

# code -> (HTTP status, when it happens). Client errors are 4xx; 5xx means the service itself is at fault.
ERRORS: dict[str, tuple[int, str]] = {
    "invalid_request": (422, "a field is missing, misnamed or of the wrong type; or an unexpected body"),
    "invalid_id": (422, "the study id is not 32 lowercase hexadecimal characters"),
    "empty_file": (422, "the uploaded file has 0 bytes"),
    "unsupported_media_type": (415, "the bytes are not PNG, JPEG or DICOM (sniffed from the content, never the name)"),
    "unreadable_image": (422, "a PNG, JPEG or DICOM that cannot be decoded: truncated, corrupt, no pixel data"),
    "image_too_large": (422, "the header's dimensions are above the decompression-bomb limit; nothing was decoded"),
    "payload_too_large": (413, "the request body is above the upload limit (or the JSON limit for other bodies)"),
    "unauthorized": (401, "API key mode is on and the key is missing or wrong"),
    "not_found": (404, "no such route"),
    "study_not_found": (404, "no study has this id"),
    "prediction_not_found": (404, "the heatmap link of a /v1/predict answer expired or never existed"),
    "unknown_finding": (404, "the model has no finding of this name"),
    "method_not_allowed": (405, "the route exists but not for this HTTP method"),
    "already_read": (409, "the study was already marked as read"),
    "internal_error": (500, "a bug in the service (logged); the request may be retried"),
    "unavailable": (503, "/healthz: the model or the database is not usable"),
}


class ServeError(CxrmtlError):
    """The service cannot start: a missing extra, an unsafe bind, an unusable database or key file."""


class ApiError(Exception):
    """An error answered to the client: ``code`` (a key of ERRORS) and a one-line message."""

    def __init__(self, code: str, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.status = ERRORS[code][0]
        self.message = " ".join(str(message).split())
        self.headers = dict(headers or {})


def error_body(code: str, message: str) -> bytes:
    """The JSON body of an error response."""
    return json.dumps({"error": {"code": code, "message": " ".join(str(message).split())}}).encode("utf-8")


Send = Callable[[dict[str, Any]], Awaitable[None]]


async def send_error(send: Send, error: ApiError) -> None:
    """Answer ``error`` on a raw ASGI ``send`` (for middlewares that reply before the app runs)."""
    body = error_body(error.code, error.message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
