"""Read any chest X-ray file (PNG, JPEG, DICOM) into one 2-D grayscale array, or fail with a clear ImageReadError.

The format is recognised by its magic bytes, not by the file extension. Before any pixel is decoded the header's
dimensions are checked against ``labels.MAX_IMAGE_SIDE`` / ``max_pixels`` (decompression-bomb guard) and the file
size against ``labels.MAX_IMAGE_BYTES``; a file whose end marker is missing is reported as truncated. Colour images
keep their gray content: equal channels are taken as they are, otherwise BT.601 luma; alpha is dropped (the RGBA
PNGs of the NIH release are opaque gray images). 8-bit sources give ``uint8``, 16-bit ones ``uint16``.

PNG decoding tries the strict decoders in ``PNG_DECODERS`` in order (fastest first, measured by
``bench/bench_decode.py``); a later one is used only where an earlier one cannot decode the file, and the error
names the last decoder's reason when none can.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrmtl import labels
from cxrmtl.errors import ImageReadError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC = b"DICM"
DICOM_PREAMBLE = 128  # DICOM PS3.10 section 7.1: 128-byte preamble, then "DICM"
PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type and its fixed CRC
JPEG_EOI = b"\xff\xd9"
TAIL_BYTES = 4096  # how far from the end an end marker may sit (trailing padding some writers add)
PROBE_HEAD_BYTES = 1 << 18  # JPEG frame headers can follow large EXIF/ICC segments (each at most 64 KiB)

# Valid (colour type -> bit depths) pairs of the PNG specification, section 11.2.2 (IHDR).
PNG_BIT_DEPTHS: dict[int, tuple[int, ...]] = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# JPEG start-of-frame markers (ITU T.81 table B.1): every SOFn except DHT (C4), JPG (C8) and DAC (CC).
JPEG_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn carry no length field

# Strict PNG decoders tried in order (bench/results/decode.md): OpenCV was the fastest of Pillow, OpenCV and pyspng
# on the NIH PNGs and the only one to handle every kind (pyspng cannot output 8-bit gray+alpha; Pillow drops 16-bit
# colour to 8 bits). pyspng follows as a fallback and for its precise error messages (OpenCV only returns None).
# Pillow is registered but never used for PNG: it silently zero-fills an image whose IDAT data ends early.
PNG_DECODERS: tuple[str, ...] = ("cv2", "spng")


# What a parser may raise on malformed input (lazily converted DICOM values, odd lengths, ...): turned into
# ImageReadError so that no bad file can crash a long job.
_MALFORMED_DATA_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    NotImplementedError,  # pydicom: "Unknown Value Representation" in a damaged header
    RuntimeError,
    struct.error,
    EOFError,
    zlib.error,
)


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says, found without decoding its pixels."""

    format: str
    width: int
    height: int


# ----------------------------------------------------------------------------------------------------------------
# public API


def read_gray(path: str | Path, *, max_pixels: int = labels.MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode ``path`` into a 2-D ``uint8`` or ``uint16`` array; raise ``ImageReadError(path, reason)`` otherwise."""
    path = Path(path)
    data = _read_bytes(path)
    name = detect_format(path, data)
    fmt = _FORMATS[name]
    try:
        width, height = fmt.header(path, data)
        check_dimensions(path, width=width, height=height, max_pixels=max_pixels)
        fmt.check_complete(path, data)
        image = fmt.decode(path, data)
    except _MALFORMED_DATA_ERRORS as exc:  # malformed fields surfacing from deep inside a parser
        raise ImageReadError(path, f"malformed {name.upper()} data: {type(exc).__name__}: {exc}") from None
    return _check_result(path, image, width=width, height=height)


def probe_image(path: str | Path, *, max_pixels: int = labels.MAX_IMAGE_PIXELS) -> ImageInfo:
    """Check an image file cheaply: size, format, header dimensions and end marker, without decoding pixels.

    Catches missing, empty, oversized, truncated and non-image files at a fraction of a decode's cost; corrupt
    compressed data in the middle of a file is only found by ``read_gray``.
    """
    path = Path(path)
    size = _check_file(path)
    data = _read_head_tail(path, size)
    name = detect_format(path, data)
    if name == "dicom" and size > len(data):  # the DICOM header can only be parsed from the whole file
        data = _read_bytes(path)
    fmt = _FORMATS[name]
    try:
        width, height = fmt.header(path, data)
        check_dimensions(path, width=width, height=height, max_pixels=max_pixels)
        fmt.check_complete(path, data)
    except _MALFORMED_DATA_ERRORS as exc:
        raise ImageReadError(path, f"malformed {name.upper()} data: {type(exc).__name__}: {exc}") from None
    return ImageInfo(format=name, width=width, height=height)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Return an 8-bit copy of a 2-D image: ``uint8`` unchanged, anything else scaled from its min..max to 0..255.

    Min-max rather than ``>> 8``: 16-bit X-rays often hold 10-12 significant bits, which a fixed shift would crush
    into the bottom few gray levels. A constant image maps to zeros.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        raise ImageReadError("<array>", f"to_uint8 needs a 2-D numpy array, got {_describe(image)}")
    if image.dtype == np.uint8:
        return image
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ImageReadError("<array>", f"to_uint8 needs an integer or float image, got dtype {image.dtype}")
    if image.size == 0:
        return image.astype(np.uint8)
    values = image.astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageReadError("<array>", "to_uint8 got NaN or infinite pixel values")
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(image.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


def detect_format(path: str | Path, data: bytes) -> str:
    """Name the format of ``data`` from its magic bytes: ``png``, ``jpeg`` or ``dicom``."""
    for name, matches in _MAGIC:
        if matches(data):
            return name
    head = data[:8].hex(" ")
    raise ImageReadError(path, f"not a PNG, JPEG or DICOM file (first bytes: {head or 'none'})")


def check_dimensions(path: str | Path, *, width: int, height: int, max_pixels: int) -> None:
    """Refuse images too small to resample or too large to decode safely (decompression-bomb guard)."""
    if width < labels.MIN_IMAGE_SIDE or height < labels.MIN_IMAGE_SIDE:
        raise ImageReadError(
            path, f"image is {width}x{height} pixels; at least {labels.MIN_IMAGE_SIDE} per side needed"
        )
    too_large = max(width, height) > labels.MAX_IMAGE_SIDE or width * height > max_pixels
    if too_large:
        raise ImageReadError(
            path,
            f"header says {width}x{height} ({width * height:,} pixels), above the limit of {labels.MAX_IMAGE_SIDE} "
            f"per side and {max_pixels:,} pixels (decompression-bomb guard); nothing was decoded",
        )


# ----------------------------------------------------------------------------------------------------------------
# files


def _check_file(path: Path) -> int:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot access file: {exc.strerror or exc}") from None
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    if st.st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    if st.st_size > labels.MAX_IMAGE_BYTES:
        raise ImageReadError(path, f"file is {st.st_size:,} bytes, above the limit of {labels.MAX_IMAGE_BYTES:,} bytes")
    return st.st_size


def _read_bytes(path: Path) -> bytes:
    _check_file(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file: {exc.strerror or exc}") from None


def _read_head_tail(path: Path, size: int) -> bytes:
    """The first PROBE_HEAD_BYTES and last TAIL_BYTES of a file, joined (the whole file when it is small)."""
    try:
        with open(path, "rb") as handle:
            if size <= PROBE_HEAD_BYTES + TAIL_BYTES:
                return handle.read()
            head = handle.read(PROBE_HEAD_BYTES)
            handle.seek(size - TAIL_BYTES, os.SEEK_SET)
            return head + handle.read()
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file: {exc.strerror or exc}") from None


def _describe(obj: object) -> str:
    if isinstance(obj, np.ndarray):
        return f"array of shape {obj.shape} and dtype {obj.dtype}"
    return type(obj).__name__


def _check_result(path: Path, image: np.ndarray, *, width: int, height: int) -> np.ndarray:
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(path, f"decoder returned {_describe(image)}, expected a 2-D uint8/uint16 image")
    if image.shape != (height, width):
        raise ImageReadError(path, f"decoded {image.shape[1]}x{image.shape[0]} but the header says {width}x{height}")
    return np.ascontiguousarray(image)


# ----------------------------------------------------------------------------------------------------------------
# colour -> gray


def _to_gray(image: np.ndarray, *, order: str) -> np.ndarray:
    """Collapse channels to gray: (gray, alpha) -> gray; equal colour channels -> one of them; else BT.601 luma."""
    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"unexpected decoded shape {image.shape}")
    if image.shape[2] <= 2:
        return image[:, :, 0]
    color = image[:, :, :3]
    first = color[:, :, 0]
    if np.array_equal(first, color[:, :, 1]) and np.array_equal(first, color[:, :, 2]):
        return first
    weights = np.asarray(labels.LUMA_WEIGHTS_RGB if order == "RGB" else labels.LUMA_WEIGHTS_RGB[::-1])
    gray = color.astype(np.float32) @ weights.astype(np.float32)
    limit = np.iinfo(image.dtype).max
    return np.clip(np.rint(gray), 0, limit).astype(image.dtype)


# ----------------------------------------------------------------------------------------------------------------
# PNG


def _png_header(path: Path, data: bytes) -> tuple[int, int]:
    if len(data) < 33:
        raise ImageReadError(path, f"truncated PNG: {len(data)} bytes, too short for the IHDR header")
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        raise ImageReadError(path, "corrupt PNG: the first chunk is not a 13-byte IHDR")
    (crc,) = struct.unpack(">I", data[29:33])
    if zlib.crc32(data[12:29]) != crc:
        raise ImageReadError(path, "corrupt PNG: IHDR checksum mismatch")
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    if depth not in PNG_BIT_DEPTHS.get(color, ()):
        raise ImageReadError(path, f"corrupt PNG: invalid colour type {color} with bit depth {depth}")
    return width, height


def _png_complete(path: Path, data: bytes) -> None:
    if PNG_IEND not in data[-TAIL_BYTES:]:
        raise ImageReadError(path, "truncated PNG: no IEND chunk at the end of the file")


def _png_spng(data: bytes) -> np.ndarray:
    import pyspng

    try:
        return _to_gray(pyspng.load(data), order="RGB")
    except RuntimeError as exc:  # "pyspng: could not decode image: IDAT stream too short" -> keep libspng's words
        raise ValueError(str(exc).removeprefix("pyspng: ")) from None


def _png_cv2(data: bytes) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("OpenCV could not decode it (corrupt or incomplete image data)")
    return _to_gray(image, order="BGR")


def _pillow_array(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        convert = _PILLOW_MODES.get(im.mode, "RGB")
        if convert is not None:
            im = im.convert(convert)
        array = np.asarray(im)
    if array.dtype == np.int32 or array.dtype not in (np.uint8, np.uint16):  # 16-bit gray may come back as mode "I"
        array = array.astype(np.uint16)
    return _to_gray(array, order="RGB")


# Pillow modes read as they are (None) or converted first; anything unlisted (CMYK, YCbCr, ...) goes through RGB.
_PILLOW_MODES: dict[str, str | None] = {
    "L": None,
    "LA": None,
    "RGB": None,
    "RGBA": None,
    "I;16": None,
    "I;16B": None,
    "I;16L": None,
    "I": None,
    "1": "L",
    "P": "RGBA",
    "PA": "RGBA",
}


def _png_decoders() -> list[Callable[[bytes], np.ndarray]]:
    return [_PNG_DECODER_REGISTRY[name] for name in PNG_DECODERS if _decoder_available(name)]


def _decoder_available(name: str) -> bool:
    module = {"spng": "pyspng", "cv2": "cv2", "pillow": "PIL"}[name]
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _png_decode(path: Path, data: bytes) -> np.ndarray:
    reason = "no PNG decoder is installed (opencv-python-headless or pyspng)"
    for decoder in _png_decoders():
        try:
            return decoder(data)
        except Exception as exc:  # decoders raise anything from ValueError to zlib.error; keep the last reason
            reason = f"cannot decode PNG data: {exc}"
    raise ImageReadError(path, reason)


_PNG_DECODER_REGISTRY: dict[str, Callable[[bytes], np.ndarray]] = {
    "spng": _png_spng,
    "cv2": _png_cv2,
    "pillow": _pillow_array,
}


# ----------------------------------------------------------------------------------------------------------------
# JPEG


def _jpeg_header(path: Path, data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageReadError(path, f"corrupt JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in JPEG_STANDALONE_MARKERS:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            break
        if marker in JPEG_SOF_MARKERS:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
    raise ImageReadError(path, "truncated or corrupt JPEG: no frame header (SOF) found")


def _jpeg_complete(path: Path, data: bytes) -> None:
    if JPEG_EOI not in data[-TAIL_BYTES:]:
        raise ImageReadError(path, "truncated JPEG: no end-of-image marker")


def _jpeg_decode(path: Path, data: bytes) -> np.ndarray:
    import cv2

    # Grayscale straight from libjpeg (its Y channel is BT.601 luma); EXIF orientation ignored as for PNG and DICOM.
    flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is not None and image.ndim == 2:
        return image
    try:
        return _pillow_array(data)
    except Exception as exc:  # Pillow's message names the problem (broken data stream, unsupported mode, ...)
        raise ImageReadError(path, f"cannot decode JPEG data: {exc}") from None


# ----------------------------------------------------------------------------------------------------------------
# DICOM


def _pydicom_guard(function: Callable[[Path, bytes], Any]) -> Callable[[Path, bytes], Any]:
    """Turn anything pydicom raises on a damaged file into ImageReadError.

    pydicom converts element values lazily and raises its own exception types (BytesLengthException derives
    straight from Exception), so a DICOM step catches broadly; the original message is kept in the reason.
    """

    @functools.wraps(function)
    def guarded(path: Path, data: bytes) -> Any:
        try:
            return function(path, data)
        except ImageReadError:
            raise
        except Exception as exc:  # see the docstring: pydicom's exception types are open-ended
            raise ImageReadError(path, f"corrupt DICOM: {type(exc).__name__}: {exc}") from None

    return guarded


def _dicom_dataset(path: Path, data: bytes) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise ImageReadError(path, f"corrupt DICOM header: {exc}") from None


@_pydicom_guard
def _dicom_header(path: Path, data: bytes) -> tuple[int, int]:
    ds = _dicom_dataset(path, data)
    if "PixelData" not in ds:
        extra = " (float pixel data is not supported)" if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds else ""
        raise ImageReadError(path, f"DICOM has no pixel data (no PixelData element){extra}")
    missing = [tag for tag in ("Rows", "Columns") if ds.get(tag) is None]
    if missing:
        raise ImageReadError(path, f"DICOM lacks {', '.join(missing)}")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageReadError(path, f"DICOM holds {frames} frames; only single-frame images are supported")
    return int(ds.Columns), int(ds.Rows)


def _dicom_complete(path: Path, data: bytes) -> None:
    """DICOM has no end marker; a short pixel buffer is caught when decoding."""


@_pydicom_guard
def _dicom_decode(path: Path, data: bytes) -> np.ndarray:
    ds = _dicom_dataset(path, data)
    _check_transfer_syntax(path, ds)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises ValueError, RuntimeError, NotImplementedError ... for bad pixel data
        raise ImageReadError(path, f"cannot decode DICOM pixel data: {exc}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    convert = _PHOTOMETRIC.get(photometric)
    if convert is None:
        raise ImageReadError(path, f"unsupported DICOM PhotometricInterpretation {photometric!r}")
    return convert(path, ds, pixels)


def _check_transfer_syntax(path: Path, ds: Any) -> None:
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        return  # pydicom guesses implicit little endian, the DICOM default
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageReadError(path, f"unsupported DICOM transfer syntax {syntax} ({syntax.name})") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a pydicom pixel data plugin"
        raise ImageReadError(
            path,
            f"compressed DICOM ({syntax.name}) needs a decoder plugin that is not installed: {needs} "
            "(for example: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)",
        )


def _stored_values(ds: Any, pixels: np.ndarray) -> np.ndarray:
    """Honour BitsStored: mask bits above it (unsigned) or sign-extend from it (signed); int64 result."""
    bits = int(ds.get("BitsStored", pixels.dtype.itemsize * 8))
    values = pixels.astype(np.int64) & ((1 << bits) - 1)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        sign = 1 << (bits - 1)
        values = (values ^ sign) - sign
    return values


def _stored_range(ds: Any) -> tuple[int, int]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _window_linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    # DICOM PS3.3 C.11.2.1.2.1: LINEAR uses (c - 0.5) and (w - 1), defined for w >= 1.
    if width < 1:
        raise ValueError(f"WindowWidth {width} must be >= 1 for LINEAR")
    return np.clip((values - (center - 0.5)) / max(width - 1.0, 1e-9) + 0.5, 0.0, 1.0)


def _window_linear_exact(values: np.ndarray, center: float, width: float) -> np.ndarray:
    # DICOM PS3.3 C.11.2.1.3.2, defined for w > 0.
    if width <= 0:
        raise ValueError(f"WindowWidth {width} must be > 0 for LINEAR_EXACT")
    return np.clip((values - center) / width + 0.5, 0.0, 1.0)


def _window_sigmoid(values: np.ndarray, center: float, width: float) -> np.ndarray:
    # DICOM PS3.3 C.11.2.1.3.1, defined for w > 0.
    if width <= 0:
        raise ValueError(f"WindowWidth {width} must be > 0 for SIGMOID")
    return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))


_VOI_FUNCTIONS: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "LINEAR": _window_linear,
    "LINEAR_EXACT": _window_linear_exact,
    "SIGMOID": _window_sigmoid,
}


def _first(value: Any) -> float:
    """The first of a possibly multi-valued DICOM element (the default window)."""
    from pydicom.multival import MultiValue

    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0]
    return float(value)


def _apply_voi(path: Path, ds: Any, values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Map modality values to 0..1 with the first VOI window, else the VOI LUT, else the full value range."""
    from pydicom.pixels import apply_voi

    if "WindowCenter" in ds and "WindowWidth" in ds:
        name = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        function = _VOI_FUNCTIONS.get(name)
        if function is None:
            raise ImageReadError(path, f"unsupported DICOM VOILUTFunction {name!r}")
        try:
            return function(values, _first(ds.WindowCenter), _first(ds.WindowWidth))
        except (ValueError, TypeError, IndexError) as exc:
            raise ImageReadError(path, f"bad DICOM window (WindowCenter/WindowWidth): {exc}") from None
    if "VOILUTSequence" in ds:
        try:
            item = ds.VOILUTSequence[0]
            bits = int(item.LUTDescriptor[2])
            # The LUT is indexed by integer modality values (PS3.3 C.11.2.1.1): round a rescaled float input.
            lut_input = np.rint(values).astype(np.int64)
            return np.asarray(apply_voi(lut_input, ds), dtype=np.float64) / float((1 << bits) - 1)
        except Exception as exc:  # a malformed LUT can fail in many ways inside pydicom
            raise ImageReadError(path, f"bad DICOM VOILUTSequence: {exc}") from None
    low, high = value_range
    return np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)


def _dicom_mono(path: Path, ds: Any, pixels: np.ndarray) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    if pixels.ndim != 2:
        raise ImageReadError(path, f"monochrome DICOM decoded to shape {pixels.shape}, expected 2-D")
    stored = _stored_values(ds, pixels)
    try:
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
        ends = np.asarray(apply_modality_lut(np.asarray(_stored_range(ds), dtype=np.int64), ds), dtype=np.float64)
    except Exception as exc:  # malformed RescaleSlope/Intercept or Modality LUT
        raise ImageReadError(path, f"bad DICOM modality transform (RescaleSlope/Intercept or LUT): {exc}") from None
    unit = _apply_voi(path, ds, values, (float(ends.min()), float(ends.max())))
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":  # MONOCHROME1: low values are bright
        unit = 1.0 - unit
    bits = int(ds.get("BitsStored", 16))
    dtype, top = (np.uint16, 65535.0) if bits > 8 else (np.uint8, 255.0)
    return np.rint(unit * top).astype(dtype)


def _dicom_color(path: Path, ds: Any, pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageReadError(path, f"colour DICOM decoded to shape {pixels.shape}, expected (rows, columns, 3)")
    if pixels.dtype not in (np.uint8, np.uint16):  # e.g. a palette LUT with odd entry sizes
        pixels = to_uint8(pixels.reshape(pixels.shape[0], -1)).reshape(pixels.shape)
    return _to_gray(pixels, order="RGB")  # pydicom 3 converts YBR to RGB by default


def _dicom_palette(path: Path, ds: Any, pixels: np.ndarray) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    try:
        rgb = apply_color_lut(pixels, ds)
    except Exception as exc:  # malformed palette descriptors
        raise ImageReadError(path, f"bad DICOM palette colour LUT: {exc}") from None
    return _dicom_color(path, ds, np.asarray(rgb))


_PHOTOMETRIC: dict[str, Callable[[Path, Any, np.ndarray], np.ndarray]] = {
    "MONOCHROME1": _dicom_mono,
    "MONOCHROME2": _dicom_mono,
    "RGB": _dicom_color,
    "YBR_FULL": _dicom_color,
    "YBR_FULL_422": _dicom_color,
    "YBR_ICT": _dicom_color,
    "YBR_RCT": _dicom_color,
    "PALETTE COLOR": _dicom_palette,
}


# ----------------------------------------------------------------------------------------------------------------
# format registry


@dataclass(frozen=True)
class _Format:
    header: Callable[[Path, bytes], tuple[int, int]]
    check_complete: Callable[[Path, bytes], None]
    decode: Callable[[Path, bytes], np.ndarray]


_FORMATS: dict[str, _Format] = {
    "png": _Format(_png_header, _png_complete, _png_decode),
    "jpeg": _Format(_jpeg_header, _jpeg_complete, _jpeg_decode),
    "dicom": _Format(_dicom_header, _dicom_complete, _dicom_decode),
}

_MAGIC: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("png", lambda data: data.startswith(PNG_MAGIC)),
    ("jpeg", lambda data: data.startswith(JPEG_MAGIC)),
    ("dicom", lambda data: data[DICOM_PREAMBLE : DICOM_PREAMBLE + 4] == DICOM_MAGIC),
)
