"""Uploaded bytes -> a checked, decoded image; DICOM identifiers; the PNGs the page shows (image, heatmap).

Everything about an upload is decided from its bytes: the format from the magic bytes (``data.imageio
.detect_format``), the size from the header before any pixel is decoded (``probe_image``: the decompression-bomb
guard), then ``read_gray``. The client's file name and content type are never looked at. Decoding reads the bytes
from an anonymous in-memory file (Linux memfd), or where there is none from a temporary file the service names
itself (``upload-*.bin`` in the store's tmp folder), removed right after.

Display: the stored image as 8-bit gray, at most ``DISPLAY_MAX_SIDE`` pixels on a side (the page's viewer), in the
frame of the original image. Heatmaps are computed on the centre square the network saw (``data.cache
.square_crop_box``) and drawn back into that frame, so a heatmap layer lies exactly over the display image.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrmtl.errors import ImageReadError
from cxrmtl.serve.errors import ApiError

FORMAT_SUFFIX: dict[str, str] = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}
DISPLAY_MAX_SIDE = 1024  # the viewer never needs more on a laptop screen; keeps display PNGs small
HEATMAP_MODES: tuple[str, ...] = ("overlay", "layer")
# Heatmap drawing: below HEAT_FLOOR the map is left transparent (Grad-CAM is min-max scaled, so low values are
# noise); above it the colour's opacity rises to HEAT_MAX_ALPHA, leaving the anatomy visible underneath.
HEAT_FLOOR = 0.2
HEAT_MAX_ALPHA = 0.6
# DICOM identifiers kept for display and de-duplication (PS3.5 6.2: UI at most 64 chars of digits and dots; LO 64).
DICOM_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
DICOM_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
DICOM_MAX_LEN = 64


@dataclass(frozen=True)
class Upload:
    """The bytes of one uploaded file, their sha256 and their format (sniffed)."""

    data: bytes
    sha256: str
    format: str


@dataclass(frozen=True)
class DicomInfo:
    """The DICOM identifiers the worklist shows and de-duplicates by; None where absent or malformed."""

    patient_id: str | None = None
    study_instance_uid: str | None = None
    study_date: str | None = None  # ISO 8601 date

    def to_dict(self) -> dict[str, str | None]:
        return {"patient_id": self.patient_id, "study_instance_uid": self.study_instance_uid,
                "study_date": self.study_date}


def sniff(data: bytes) -> Upload:
    """Check the bytes are a PNG, JPEG or DICOM by their magic bytes; ApiError otherwise."""
    from cxrmtl.data.imageio import detect_format

    if not data:
        raise ApiError("empty_file", "file: the upload has 0 bytes")
    try:
        fmt = detect_format("upload", data)
    except ImageReadError:
        raise ApiError("unsupported_media_type", "file: the content is not a PNG, JPEG or DICOM image "
                       "(recognised by its first bytes, whatever the file name says)") from None
    return Upload(data=data, sha256=hashlib.sha256(data).hexdigest(), format=fmt)


def _clean_text(value: Any) -> str | None:
    if value is None:
        return None
    text = "".join(ch for ch in str(value) if ch.isprintable()).strip()
    return text[:DICOM_MAX_LEN] or None


def _raw_text(ds: Any, keyword: str) -> str | None:
    """An element's stored bytes as text, without pydicom's value conversion (whose validation warnings would log
    the value); multi-valued elements keep their first value."""
    from pydicom.datadict import tag_for_keyword

    item = ds.get_item(tag_for_keyword(keyword))
    value = getattr(item, "value", None) if item is not None else None
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1", errors="replace")
    return _clean_text(str(value).split("\\")[0].strip("\x00 "))


def dicom_info(data: bytes) -> DicomInfo:
    """PatientID, StudyInstanceUID and StudyDate of a DICOM file; missing or malformed values are None.

    Best effort by design: the identifiers are for display and de-duplication only; whether the image is usable is
    decided by ``decode``. Values are read raw (no pydicom validation, which logs offending values) and are never
    logged here.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                             specific_tags=["PatientID", "StudyInstanceUID", "StudyDate"])
        patient, uid, date = (_raw_text(ds, k) for k in ("PatientID", "StudyInstanceUID", "StudyDate"))
    except Exception:  # a damaged header: no identifiers (the decoder reports the damage if it matters)
        return DicomInfo()
    date_match = DICOM_DATE.match(date or "")
    return DicomInfo(patient_id=patient,
                     study_instance_uid=uid if uid and DICOM_UID.match(uid) else None,
                     study_date="-".join(date_match.groups()) if date_match else None)


@contextlib.contextmanager
def _readable_path(data: bytes, *, tmp_dir: Path) -> Iterator[Path]:
    """A path holding ``data`` for the path-based readers: an anonymous in-memory file (Linux memfd) where the system
    has one, so an upload never touches the disk; else a temporary file in ``tmp_dir``, removed on exit."""
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create("cxrmtl-upload", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            yield Path(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=tmp_dir, prefix="upload-", suffix=".bin") as handle:
        handle.write(data)
        handle.flush()
        yield Path(handle.name)


def decode(upload: Upload, *, tmp_dir: Path) -> np.ndarray:
    """The decoded 2-D gray image (uint8/uint16) of an upload; ApiError for anything that is not a usable image."""
    from cxrmtl.data.imageio import probe_image, read_gray

    with _readable_path(upload.data, tmp_dir=tmp_dir) as path:
        try:
            probe_image(path)  # header + end marker, no pixels: bombs and truncations stop here
            return read_gray(path)
        except ImageReadError as exc:
            code = "image_too_large" if "decompression-bomb" in exc.reason else "unreadable_image"
            raise ApiError(code, f"file: {exc.reason}") from None


def display_image(gray: np.ndarray) -> np.ndarray:
    """8-bit gray picture of the whole image, at most DISPLAY_MAX_SIDE pixels on a side."""
    import cv2

    from cxrmtl.data.imageio import to_uint8

    image = to_uint8(gray)
    height, width = image.shape
    scale = DISPLAY_MAX_SIDE / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def png_bytes(picture: np.ndarray) -> bytes:
    """PNG of a gray, BGR or BGRA uint8 picture."""
    import cv2

    ok, buffer = cv2.imencode(".png", picture)
    if not ok:
        raise RuntimeError("OpenCV could not encode the PNG")
    return buffer.tobytes()


def heatmap_picture(display: np.ndarray, cam: np.ndarray, *, width: int, height: int, mode: str = "overlay"
                    ) -> np.ndarray:
    """Draw a Grad-CAM map (S, S) of the centre crop into the display frame of a ``width`` x ``height`` image.

    ``overlay``: the display image with the colour map blended in (BGR). ``layer``: the colour map alone with an
    alpha channel (BGRA, transparent where the map is below HEAT_FLOOR), to lay over the display image.
    """
    import cv2

    from cxrmtl.data.cache import square_crop_box

    if mode not in HEATMAP_MODES:
        raise ValueError(f"mode must be one of {HEATMAP_MODES}, got {mode!r}")
    dh, dw = display.shape
    scale = dw / width
    x0, y0, side = square_crop_box(width, height)
    left, top = round(x0 * scale), round(y0 * scale)
    span = max(1, min(round(side * scale), dw - left, dh - top))
    heat = np.zeros((dh, dw), dtype=np.float32)
    cam = np.clip(np.nan_to_num(cam.astype(np.float32), nan=0.0), 0.0, 1.0)
    heat[top:top + span, left:left + span] = cv2.resize(cam, (span, span), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.rint(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = np.clip((heat - HEAT_FLOOR) / (1 - HEAT_FLOOR), 0.0, 1.0) * HEAT_MAX_ALPHA
    if mode == "layer":
        return np.dstack([colour, np.rint(alpha * 255).astype(np.uint8)])
    base = cv2.cvtColor(display, cv2.COLOR_GRAY2BGR).astype(np.float32)
    blended = base * (1 - alpha[..., None]) + colour.astype(np.float32) * alpha[..., None]
    return np.rint(blended).astype(np.uint8)
