"""read_gray / probe_image / to_uint8: every good format and mode, and malformed files built inside each test."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

from cxrmtl import labels
from cxrmtl.data import imageio
from cxrmtl.data.imageio import ImageInfo, probe_image, read_gray, to_uint8
from cxrmtl.errors import ImageReadError

RNG = np.random.default_rng(0)
GRAY8 = RNG.integers(0, 256, size=(24, 32), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, size=(24, 32), dtype=np.uint16)


# ----------------------------------------------------------------------------------------------------------------
# builders


def save_pil(path: Path, array: np.ndarray, mode: str | None = None, **params: object) -> Path:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path, **params)
    return path


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, idat: bytes, *, depth: int = 8, color: int = 0) -> bytes:
    """A PNG built chunk by chunk, so headers and data can lie independently."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return imageio.PNG_MAGIC + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def gray_png_bytes(array: np.ndarray) -> bytes:
    rows = b"".join(b"\x00" + row.tobytes() for row in array)  # filter type 0 on every row
    return raw_png(array.shape[1], array.shape[0], zlib.compress(rows))


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    syntax: str = uid.ExplicitVRLittleEndian,
    pixel_bytes: bytes | None = None,
    **elements: object,
) -> Path:
    """A minimal single-frame DX DICOM file with a preamble; ``elements`` are set as given."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = pixels.tobytes() if pixel_bytes is None else pixel_bytes
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


# ----------------------------------------------------------------------------------------------------------------
# good PNGs


PNG_MODES = {
    "L8": (GRAY8, None),
    "LA": (GRAY8, "LA"),
    "RGB-gray": (GRAY8, "RGB"),
    "RGBA-gray": (GRAY8, "RGBA"),
}


@pytest.mark.parametrize("mode", sorted(PNG_MODES))
def test_png_modes_keep_gray_content(tmp_path: Path, mode: str) -> None:
    array, convert = PNG_MODES[mode]
    path = save_pil(tmp_path / "x.png", array, convert)
    out = read_gray(path)
    assert out.dtype == np.uint8 and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_png_16bit_gray(tmp_path: Path) -> None:
    path = tmp_path / "x16.png"
    assert cv2.imwrite(str(path), GRAY16)
    out = read_gray(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, GRAY16)


def test_png_16bit_colour_with_equal_channels(tmp_path: Path) -> None:
    path = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(path), np.dstack([GRAY16] * 3))
    out = read_gray(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, GRAY16)


def test_png_colour_becomes_bt601_luma(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, size=(8, 9, 3), dtype=np.uint8)
    out = read_gray(save_pil(tmp_path / "c.png", rgb))
    expected = np.rint(rgb.astype(np.float64) @ np.asarray(labels.LUMA_WEIGHTS_RGB))
    assert np.abs(out.astype(np.int16) - expected).max() <= 1


def test_png_one_bit(tmp_path: Path) -> None:
    bits = (GRAY8 > 127).astype(np.uint8) * 255
    path = tmp_path / "b.png"
    Image.fromarray(bits).convert("1", dither=Image.Dither.NONE).save(path)
    out = read_gray(path)
    np.testing.assert_array_equal(out, bits)


def palette_png(path: Path, gray: np.ndarray) -> Path:
    """A palette PNG whose indices are a shuffled gray palette, so decoding must look the colours up."""
    levels = np.unique(gray)
    order = np.random.default_rng(1).permutation(len(levels))
    image = Image.fromarray(order[np.searchsorted(levels, gray)].astype(np.uint8), mode="P")
    palette = np.zeros((256, 3), np.uint8)
    palette[order] = levels[:, None]
    image.putpalette(palette.ravel().tolist())
    image.save(path)
    return path


def test_png_palette_is_looked_up(tmp_path: Path) -> None:
    np.testing.assert_array_equal(read_gray(palette_png(tmp_path / "p.png", GRAY8)), GRAY8)


def _decoder_case(tmp: Path, kind: str) -> tuple[Path, np.ndarray]:
    if kind in ("16", "RGB16"):
        path = tmp / "x.png"
        cv2.imwrite(str(path), GRAY16 if kind == "16" else np.dstack([GRAY16] * 3))
        return path, GRAY16
    if kind == "P":
        return palette_png(tmp / "x.png", GRAY8), GRAY8
    return save_pil(tmp / "x.png", GRAY8, kind), GRAY8


# What each registered decoder cannot do (why read_gray keeps a fallback chain); see bench/results/decode.md.
DECODER_LIMITS = {("spng", "LA"): "libspng cannot output 8-bit gray+alpha", ("pillow", "RGB16"): "Pillow keeps 8 bits"}


@pytest.mark.parametrize("decoder", sorted(imageio._PNG_DECODER_REGISTRY))
@pytest.mark.parametrize("kind", ["L", "LA", "RGBA", "P", "16", "RGB16"])
def test_png_decoder_matrix(tmp_path: Path, decoder: str, kind: str) -> None:
    """Each decoder gives the exact gray image for every kind except its documented limits, which it fails."""
    if not imageio._decoder_available(decoder):
        pytest.skip(f"PNG decoder {decoder} not installed")
    path, expected = _decoder_case(tmp_path, kind)
    decode = imageio._PNG_DECODER_REGISTRY[decoder]
    if (decoder, kind) in DECODER_LIMITS:
        try:
            out = decode(path.read_bytes())
        except Exception:  # the decoder refuses the kind outright
            return
        assert not np.array_equal(out, expected), "limit lifted: update DECODER_LIMITS and PNG_DECODERS"
        return
    np.testing.assert_array_equal(decode(path.read_bytes()), expected)


def test_pillow_is_not_a_png_fallback_because_it_zero_fills(tmp_path: Path) -> None:
    """Why Pillow is not in PNG_DECODERS: it returns an image for IDAT data that ends early; strict decoders refuse."""
    data = _short_idat(tmp_path).read_bytes()
    assert "pillow" not in imageio.PNG_DECODERS
    assert not imageio._pillow_array(data)[1:].any()
    for name in imageio.PNG_DECODERS:
        with pytest.raises(ValueError):
            imageio._PNG_DECODER_REGISTRY[name](data)


def test_read_gray_handles_every_kind(tmp_path: Path) -> None:
    for kind in ["L", "LA", "RGBA", "P", "16", "RGB16"]:
        path, expected = _decoder_case(tmp_path, kind)
        np.testing.assert_array_equal(read_gray(path), expected, err_msg=kind)


def test_format_is_found_by_content_not_extension(tmp_path: Path) -> None:
    path = tmp_path / "really_a_png.dcm"
    path.write_bytes(gray_png_bytes(GRAY8))
    np.testing.assert_array_equal(read_gray(path), GRAY8)


def _pil_mode(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


def test_real_rgba_nih_images_keep_gray(nih_shared: Path) -> None:
    rgba = [p for p in sorted((nih_shared / "images").glob("*.png")) if _pil_mode(p) == "RGBA"]
    assert rgba, "the shared NIH images include RGBA PNGs"
    for path in rgba:
        out = read_gray(path)
        with Image.open(path) as image:
            reference = np.asarray(image)[:, :, 0]
        assert out.shape == (labels.NIH_IMAGE_SIZE, labels.NIH_IMAGE_SIZE)
        np.testing.assert_array_equal(out, reference)


# ----------------------------------------------------------------------------------------------------------------
# good JPEGs


def test_jpeg_gray(tmp_path: Path) -> None:
    smooth = np.tile(np.arange(32, dtype=np.uint8) * 8, (24, 1))
    out = read_gray(save_pil(tmp_path / "g.jpg", smooth, quality=95))
    assert out.dtype == np.uint8 and out.shape == smooth.shape
    assert np.abs(out.astype(int) - smooth).max() <= 8


def test_jpeg_colour(tmp_path: Path) -> None:
    smooth = np.tile(np.arange(32, dtype=np.uint8) * 8, (24, 1))
    out = read_gray(save_pil(tmp_path / "c.jpg", np.dstack([smooth] * 3), quality=95))
    assert out.ndim == 2 and np.abs(out.astype(int) - smooth).max() <= 8


# ----------------------------------------------------------------------------------------------------------------
# good DICOMs


def test_dicom_monochrome2_16bit(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 4096, size=(20, 30), dtype=np.uint16)
    out = read_gray(write_dicom(tmp_path / "a.dcm", pixels, bits_stored=12))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, np.rint(pixels / 4095 * 65535).astype(np.uint16))


def test_dicom_bits_stored_masks_high_bits(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 4096, size=(20, 30), dtype=np.uint16)
    dirty = pixels | np.uint16(0xF000)  # overlay bits above BitsStored must be ignored
    out = read_gray(write_dicom(tmp_path / "a.dcm", dirty, bits_stored=12))
    np.testing.assert_array_equal(out, np.rint(pixels / 4095 * 65535).astype(np.uint16))


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, size=(10, 12), dtype=np.uint8)
    out = read_gray(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, 255 - pixels)


def test_dicom_window_after_rescale(tmp_path: Path) -> None:
    pixels = np.array([[0, 1000, 2000, 3000], [500, 1500, 2500, 3500]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "w.dcm",
        pixels,
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=3000,
        WindowWidth=2001,
        VOILUTFunction="LINEAR",
    )
    out = read_gray(path)
    values = pixels * 2.0 - 1000
    expected = np.clip((values - 2999.5) / 2000 + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1
    np.testing.assert_array_equal(out, np.rint(expected * 65535).astype(np.uint16))


def test_dicom_voi_lut_sequence(tmp_path: Path) -> None:
    pixels = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype=np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]
    item.add_new(0x00283006, "US", [0, 10, 200, 255])  # LUTData (VR "US or OW" must be given)
    path = write_dicom(tmp_path / "l.dcm", pixels, bits_stored=8, VOILUTSequence=[item])
    expected = np.array([[0, 10, 200, 255], [255, 200, 10, 0]], dtype=np.uint8)  # 8-bit LUT output -> uint8
    np.testing.assert_array_equal(read_gray(path), expected)


def test_dicom_signed_pixels(tmp_path: Path) -> None:
    pixels = np.array([[-2048, 0], [1024, 2047]], dtype=np.int16)
    out = read_gray(write_dicom(tmp_path / "s.dcm", pixels, bits_stored=12))
    expected = (pixels.astype(float) + 2048) / 4095 * 65535
    np.testing.assert_array_equal(out, np.rint(expected).astype(np.uint16))


def test_dicom_rgb(tmp_path: Path) -> None:
    rgb = np.dstack([GRAY8] * 3)
    np.testing.assert_array_equal(read_gray(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")), GRAY8)


def test_dicom_rle_compressed(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 4096, size=(16, 16), dtype=np.uint16)
    path = write_dicom(tmp_path / "plain.dcm", pixels, bits_stored=12)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.compress(uid.RLELossless, encoding_plugin="pydicom")
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(read_gray(tmp_path / "rle.dcm"), read_gray(path))


def test_dicom_jpeg_baseline_with_its_plugin(tmp_path: Path) -> None:
    smooth = np.tile(np.arange(32, dtype=np.uint8) * 8, (24, 1))
    jpeg = save_pil(tmp_path / "frame.jpg", smooth, quality=95).read_bytes()
    path = write_dicom(tmp_path / "j.dcm", smooth, syntax=uid.JPEGBaseline8Bit, pixel_bytes=encapsulate([jpeg]))
    out = read_gray(path)
    assert out.dtype == np.uint8 and np.abs(out.astype(int) - smooth).max() <= 8


# ----------------------------------------------------------------------------------------------------------------
# malformed files: each must raise ImageReadError naming the file and the problem


def _huge_png(tmp: Path) -> Path:
    path = tmp / "bomb.png"
    path.write_bytes(raw_png(100_000, 100_000, zlib.compress(b"\x00" * 64)))
    return path


def _corrupt_zlib(tmp: Path) -> Path:
    path = tmp / "zlib.png"
    path.write_bytes(raw_png(32, 24, b"\x78\x9c" + b"\xff" * 40))  # valid zlib header, garbage deflate stream
    return path


def _bad_crc(tmp: Path) -> Path:
    data = bytearray(gray_png_bytes(GRAY8))
    data[29] ^= 0xFF  # first byte of the IHDR CRC
    path = tmp / "crc.png"
    path.write_bytes(bytes(data))
    return path


def _truncated_png(tmp: Path) -> Path:
    data = save_pil(tmp / "full.png", GRAY8).read_bytes()
    path = tmp / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    return path


def _short_idat(tmp: Path) -> Path:
    """Complete chunk structure (IEND present) but too little image data for the header's size."""
    path = tmp / "short.png"
    path.write_bytes(raw_png(32, 24, zlib.compress(b"\x00" + GRAY8[0].tobytes())))
    return path


def _write(name: str, data: bytes):
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(data)
        return path

    return make


def _dicom_no_pixels(tmp: Path) -> Path:
    path = write_dicom(tmp / "np.dcm", GRAY8)
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    return path


def _dicom_cut_header(tmp: Path) -> Path:
    data = write_dicom(tmp / "full.dcm", GRAY8, StudyDescription="x" * 64).read_bytes()
    path = tmp / "cut.dcm"
    path.write_bytes(data[:300])  # inside the data set, well before the pixel data
    return path


def _dicom_short_pixels(tmp: Path) -> Path:
    return write_dicom(tmp / "short.dcm", GRAY16, pixel_bytes=GRAY16.tobytes()[:100])


def _dicom_unknown_syntax(tmp: Path) -> Path:
    path = write_dicom(tmp / "ts.dcm", GRAY8)
    data = path.read_bytes()
    explicit = uid.ExplicitVRLittleEndian.encode() + b"\x00"  # UIDs are padded to even length with NUL
    private = b"1.2.3.4.5.6.7.8.9.1" + b"\x00"  # a made-up syntax of the same length
    assert len(explicit) == len(private) and data.count(explicit) == 1
    path.write_bytes(data.replace(explicit, private))
    return path


def _dicom_no_plugin(tmp: Path) -> Path:
    return write_dicom(tmp / "htj2k.dcm", GRAY8, syntax=uid.HTJ2K, pixel_bytes=encapsulate([b"\x00" * 16]))


def _dicom_huge(tmp: Path) -> Path:
    return write_dicom(tmp / "big.dcm", GRAY8, Rows=60_000, Columns=60_000)


def _dicom_frames(tmp: Path) -> Path:
    return write_dicom(tmp / "mf.dcm", GRAY8, NumberOfFrames=3)


def _dicom_bad_window(tmp: Path) -> Path:
    return write_dicom(tmp / "win.dcm", GRAY8, WindowCenter=100, WindowWidth=0)


def _dicom_photometric(tmp: Path) -> Path:
    return write_dicom(tmp / "hsv.dcm", GRAY8, photometric="HSV")


def _directory(tmp: Path) -> Path:
    path = tmp / "folder.png"
    path.mkdir()
    return path


def _oversized(tmp: Path) -> Path:
    path = tmp / "huge_file.png"
    with open(path, "wb") as handle:  # sparse: no disk space is used
        handle.write(imageio.PNG_MAGIC)
        handle.truncate(labels.MAX_IMAGE_BYTES + 1)
    return path


MALFORMED = {
    "missing file": (lambda tmp: tmp / "absent.png", "not found"),
    "directory": (_directory, "directory"),
    "zero bytes": (_write("empty.png", b""), "empty file"),
    "text named .png": (_write("text.png", b"hello, I am not an image\n"), "not a PNG, JPEG or DICOM"),
    "wrong magic": (_write("gif.png", b"GIF89a" + b"\x00" * 64), "not a PNG, JPEG or DICOM"),
    "file too large": (_oversized, "above the limit"),
    "truncated png": (_truncated_png, "truncated PNG"),
    "png header only": (_write("head.png", imageio.PNG_MAGIC + b"\x00\x00"), "truncated PNG"),
    "1x1 png": (_write("one.png", gray_png_bytes(np.zeros((1, 1), np.uint8))), "1x1 pixels"),
    "huge dimensions in header": (_huge_png, "decompression-bomb"),
    "corrupt zlib stream": (_corrupt_zlib, "IDAT stream error"),
    "too little image data": (_short_idat, "IDAT stream too short"),
    "bad IHDR checksum": (_bad_crc, "checksum"),
    "bad colour type": (_write("ct.png", raw_png(4, 4, zlib.compress(b"\x00" * 20), color=5)), "colour type"),
    "first chunk not IHDR": (_write("noihdr.png", imageio.PNG_MAGIC + png_chunk(b"IDAT", b"\x00" * 13) * 2), "IHDR"),
    "truncated jpeg": (lambda tmp: _truncated_jpeg(tmp), "truncated JPEG"),
    "jpeg without frame header": (_write("sof.jpg", b"\xff\xd8\xff\xe0\x00\x04ab\xff\xd9"), "no frame header"),
    "dicom without pixel data": (_dicom_no_pixels, "no pixel data"),
    "dicom short pixel data": (_dicom_short_pixels, "cannot decode DICOM"),
    "dicom unsupported transfer syntax": (_dicom_unknown_syntax, "unsupported DICOM transfer syntax"),
    "compressed dicom without plugin": (_dicom_no_plugin, "pylibjpeg-openjpeg"),
    "dicom huge dimensions": (_dicom_huge, "decompression-bomb"),
    "dicom multi-frame": (_dicom_frames, "3 frames"),
    "dicom zero window width": (_dicom_bad_window, "WindowWidth"),
    "dicom unsupported photometric": (_dicom_photometric, "PhotometricInterpretation"),
    "dicom truncated in its header": (_dicom_cut_header, "no pixel data"),
}


def _truncated_jpeg(tmp: Path) -> Path:
    data = save_pil(tmp / "full.jpg", GRAY8, quality=90).read_bytes()
    path = tmp / "cut.jpg"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_raise_clear_errors(tmp_path: Path, case: str) -> None:
    make, fragment = MALFORMED[case]
    path = make(tmp_path)
    with pytest.raises(ImageReadError) as info:
        read_gray(path)
    assert info.value.path == str(path)
    assert fragment in info.value.reason, info.value.reason
    assert str(path) in str(info.value)


def test_max_pixels_argument_is_honoured(tmp_path: Path) -> None:
    path = save_pil(tmp_path / "x.png", GRAY8)
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        read_gray(path, max_pixels=GRAY8.size - 1)
    assert read_gray(path, max_pixels=GRAY8.size).shape == GRAY8.shape


# ----------------------------------------------------------------------------------------------------------------
# probe_image and to_uint8


def test_probe_reports_format_and_size(tmp_path: Path) -> None:
    assert probe_image(save_pil(tmp_path / "a.png", GRAY8)) == ImageInfo("png", 32, 24)
    assert probe_image(save_pil(tmp_path / "a.jpg", GRAY8)) == ImageInfo("jpeg", 32, 24)
    assert probe_image(write_dicom(tmp_path / "a.dcm", GRAY8)) == ImageInfo("dicom", 32, 24)


def test_probe_finds_truncation_without_decoding(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="truncated PNG"):
        probe_image(_truncated_png(tmp_path))
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        probe_image(_truncated_jpeg(tmp_path))


def test_probe_reads_large_files_partially(tmp_path: Path) -> None:
    noise = RNG.integers(0, 256, size=(700, 700), dtype=np.uint8)  # incompressible: > PROBE_HEAD_BYTES as PNG
    path = save_pil(tmp_path / "big.png", noise)
    assert path.stat().st_size > imageio.PROBE_HEAD_BYTES + imageio.TAIL_BYTES
    assert probe_image(path) == ImageInfo("png", 700, 700)


def test_to_uint8_scales_min_max() -> None:
    image = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    np.testing.assert_array_equal(to_uint8(image), np.array([[0, 64], [128, 255]], dtype=np.uint8))
    assert to_uint8(GRAY8) is GRAY8
    np.testing.assert_array_equal(to_uint8(np.full((3, 3), 7, np.uint16)), np.zeros((3, 3), np.uint8))


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 2, 3), np.uint16), np.array([[np.nan, 1.0]]), np.array([["a", "b"]]), "not an array"]
)
def test_to_uint8_rejects_bad_input(bad: object) -> None:
    with pytest.raises(ImageReadError):
        to_uint8(bad)  # type: ignore[arg-type]


def test_detect_format_by_magic() -> None:
    assert imageio.detect_format("x", imageio.PNG_MAGIC + b"rest") == "png"
    assert imageio.detect_format("x", b"\xff\xd8\xff\xe0") == "jpeg"
    assert imageio.detect_format("x", b"\x00" * 128 + b"DICM") == "dicom"
    with pytest.raises(ImageReadError, match="first bytes: 42 4d"):
        imageio.detect_format("x.bmp", b"BM" + b"\x00" * 10)


# ----------------------------------------------------------------------------------------------------------------
# fuzzing: corrupted bytes of valid files either decode or raise ImageReadError, never anything else


def _valid_file_bytes(kind: str, tmp: Path) -> bytes:
    makers = {
        "png": lambda: save_pil(tmp / "f.png", GRAY8),
        "jpeg": lambda: save_pil(tmp / "f.jpg", GRAY8),
        "dicom": lambda: write_dicom(tmp / "f.dcm", GRAY16, bits_stored=12, WindowCenter=2048, WindowWidth=4096),
    }
    return makers[kind]().read_bytes()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the damaged headers it still parses
@pytest.mark.parametrize("kind", ["png", "jpeg", "dicom"])
def test_corrupted_bytes_never_escape_as_other_errors(tmp_path: Path, kind: str) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    original = _valid_file_bytes(kind, tmp_path)
    target = tmp_path / f"fuzz.{kind}"

    @settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), min_size=1, max_size=8),
        st.integers(len(original) // 4, len(original)),
    )
    def check(edits: list[tuple[int, int]], keep: int) -> None:
        data = bytearray(original[:keep])
        for position, value in edits:
            if position < len(data):
                data[position] = value
        target.write_bytes(bytes(data))
        for reader in (read_gray, probe_image):
            try:
                result = reader(target)
            except ImageReadError as exc:
                assert exc.path == str(target) and exc.reason
                continue
            if reader is read_gray:
                assert result.ndim == 2 and result.dtype in (np.uint8, np.uint16)

    check()
