"""Read any radiograph murakit is given into one form: a 2-D uint8 grayscale array.

Every image that enters murakit (training data, quality checks, uploads to the web app)
goes through :func:`read_grayscale` or :func:`read_grayscale_bytes`, so that:

- the format is decided by the file's content, not its name (MURA copies hold misnamed
  files, macOS "._" metadata files and Git LFS pointers beside the real PNGs);
- every failure is a :class:`BadImageError` that names the file and says what is wrong
  in words a person can act on, instead of a bare PIL/pydicom traceback;
- the pixel count is checked from the header *before* decoding, so a small file that
  claims to be a 20000x20000 image cannot exhaust memory (a decompression bomb);
- decoding is forced here (PIL is lazy), so a truncated file fails at read time with its
  name, not later inside a data-loader worker.

DICOM needs the optional ``pydicom`` package (``pip install murakit[dicom]``).
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from PIL import (
    BmpImagePlugin,
    ExifTags,
    GifImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

MAX_PIXELS = 100_000_000
"""Largest image (width x height) read by default; MURA's are at most 512 px a side."""

# Signature -> (format name, PIL class). The classes are called directly rather than
# through Image.open so that our own size limit, not PIL's global one, decides.
_PIL_FORMATS: tuple[tuple[bytes, str, type[ImageFile.ImageFile]], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG", PngImagePlugin.PngImageFile),
    (b"\xff\xd8\xff", "JPEG", JpegImagePlugin.JpegImageFile),
    (b"BM", "BMP", BmpImagePlugin.BmpImageFile),
    (b"II*\x00", "TIFF", TiffImagePlugin.TiffImageFile),
    (b"MM\x00*", "TIFF", TiffImagePlugin.TiffImageFile),
    (b"GIF87a", "GIF", GifImagePlugin.GifImageFile),
    (b"GIF89a", "GIF", GifImagePlugin.GifImageFile),
)

# Formats whose EXIF orientation is honoured (their EXIF sits in the header, before pixels).
_EXIF_FORMATS = ("JPEG", "TIFF", "WEBP")

# Things that are often found where an image was expected, named so the user knows why.
_NOT_IMAGES: tuple[tuple[bytes, str], ...] = (
    (b"version https://git-lfs", "a Git LFS pointer (the image itself was never fetched)"),
    (b"\x00\x05\x16\x07", "macOS AppleDouble metadata (a '._' file)"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "gzip-compressed data"),
)

# Errors PIL and its codecs raise for damaged files.
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
)

_PathLike = str | os.PathLike


class BadImageError(ValueError):
    """A file murakit cannot use as an image; ``str()`` reads ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike, problem: str | None = None) -> None:
        if problem is None:
            # DataLoader workers re-raise as ``type(err)(traceback_text)``: recover the
            # "<path>: <problem>" line so the main process still names the file.
            path, problem = _split_worker_message(str(path))
        super().__init__(str(path), problem)  # both in args, so it pickles across processes
        self.path = str(path)
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def _split_worker_message(text: str) -> tuple[str, str]:
    """("<path>", "<problem>") from a worker's traceback text ending in
    "BadImageError: <path>: <problem>"."""
    marker = "BadImageError: "
    lines = [line for line in text.splitlines() if marker in line]
    message = lines[-1].split(marker, 1)[1] if lines else text.strip().splitlines()[-1]
    path, _, problem = message.partition(": ")
    return path, problem or "unreadable image"


_TRUNCATION_FILL = 128

# --------------------------------------------------------------------------- public API


def read_grayscale(path: _PathLike, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode the image file at ``path`` into an (H, W) uint8 array, or raise BadImageError."""
    with _open_file(path) as fp:
        return _read(fp, str(path), max_pixels)


def read_grayscale_bytes(
    data: bytes, name: str = "upload", *, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Same as :func:`read_grayscale` for bytes in memory (an upload); ``name`` is for messages."""
    return _read(io.BytesIO(data), name, max_pixels)


def as_gray_uint8(image: np.ndarray) -> np.ndarray:
    """A 2-D grayscale array as the readers return it: uint8 as is, wider integers (e.g. the
    uint16 of a 16-bit PNG) and floats narrowed to 8 bits the way the readers narrow them."""
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind not in "uif":
        raise ValueError(f"expected an integer or float grayscale image, got dtype {arr.dtype}")
    return _wide_to_uint8(arr)


def sniff_format(head: bytes) -> str | None:
    """The image format named by a file's first 132 bytes ("PNG", "JPEG", "DICOM", ...), or
    None: the one content sniffer, for reading, collecting study folders and uploads."""
    if head[128:132] == b"DICM" or _looks_like_bare_dicom(head):
        return "DICOM"
    for magic, kind, _ in _PIL_FORMATS:
        if head.startswith(magic):
            return kind
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def describe_content(head: bytes) -> str:
    """What a non-image file looks like from its first bytes, for an error message."""
    return _describe(head)


def read_grayscale_salvaged(path: _PathLike) -> tuple[np.ndarray, int | None]:
    """Like :func:`read_grayscale`, but a PNG or JPEG cut short is decoded as far as its data
    goes and the unfilled rows at the bottom are dropped: (image, rows dropped).

    For importing a release known to hold such files; everywhere else a truncated file is an
    error. ``rows dropped`` is None for a complete file."""
    try:
        return read_grayscale(path), None
    except BadImageError as err:
        if "truncated" not in str(err):
            raise
    name = str(path)
    with _open_file(path) as fp:
        kind = _sniff(fp, name)
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            img = _read_pil(fp, name, kind, MAX_PIXELS)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
    filled = np.all(img == _TRUNCATION_FILL, axis=1)  # PIL paints missing rows mid-grey
    keep = len(filled) - int(np.argmin(filled[::-1])) if not filled.all() else 0
    if keep == 0:
        raise BadImageError(path, f"truncated {kind}: no rows could be decoded")
    return img[:keep].copy(), len(filled) - keep


def image_size(path: _PathLike) -> tuple[int, int]:
    """(width, height) of what read_grayscale would return, from the header alone (cheap)."""
    name = str(path)
    with _open_file(path) as fp:
        kind = _sniff(fp, name)
        if kind == "DICOM":
            ds = _dcmread(fp, name)
            return _dicom_size(ds, name)
        with _pil_errors(name, kind):
            im = _pil_open(fp, name, kind)
            width, height = im.size
            if kind in _EXIF_FORMATS and _turned_sideways(im):
                width, height = height, width  # read_grayscale turns these by 90 degrees
            return width, height


# ---------------------------------------------------------------------------- dispatch


@contextmanager
def _open_file(path: _PathLike) -> Iterator[IO[bytes]]:
    """Open for reading, turning OS errors into messages a person understands."""
    try:
        fp = open(path, "rb")
    except FileNotFoundError:
        raise BadImageError(path, "file not found") from None
    except IsADirectoryError:
        raise BadImageError(path, "is a directory, not an image file") from None
    except PermissionError:
        raise BadImageError(path, "permission denied") from None
    except OSError as err:
        raise BadImageError(path, f"cannot open: {err.strerror or err}") from None
    with fp:
        yield fp


def _read(fp: IO[bytes], name: str, max_pixels: int) -> np.ndarray:
    kind = _sniff(fp, name)
    if kind == "DICOM":
        return _read_dicom(fp, name, max_pixels)
    return _read_pil(fp, name, kind, max_pixels)


def _sniff(fp: IO[bytes], name: str) -> str:
    """Name the format from the first bytes; raise BadImageError if it is not an image."""
    head = fp.read(132)
    fp.seek(0)
    if not head:
        raise BadImageError(name, "file is empty (0 bytes)")
    kind = sniff_format(head)
    if kind is None:
        raise BadImageError(name, f"not an image: {_describe(head)}")
    return kind


def _looks_like_bare_dicom(head: bytes) -> bool:
    """DICOM written without the 128-byte preamble starts with a group 0002 or 0008 element."""
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    explicit_vr = head[4:6].isalpha() and head[4:6].isupper()  # e.g. b"UI", b"CS"
    implicit_length = int.from_bytes(head[4:8], "little")
    return explicit_vr or implicit_length < 1024


def _describe(head: bytes) -> str:
    for magic, what in _NOT_IMAGES:
        if head.startswith(magic):
            return what
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a failed download?)"
    sample = head[:24]
    is_text = b"\x00" not in head and all(b >= 32 or b in b"\t\n\r\f" for b in head)
    kind = "text" if is_text else "unknown binary data"
    return f"content is {kind} (starts with {sample!r})"


def _check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise BadImageError(name, f"image has no pixels (size {width}x{height})")
    if width * height > max_pixels:
        raise BadImageError(
            name,
            f"image is {width}x{height} = {_megapixels(width * height)} megapixels, above the "
            f"{_megapixels(max_pixels)}-megapixel limit (possible decompression bomb)",
        )


def _megapixels(n: int) -> str:
    """400000000 -> '400', 95370000 -> '95.4', 3000 -> '0.003'."""
    return f"{n / 1e6:.1f}".removesuffix(".0") if n >= 100_000 else f"{n / 1e6:.2g}"


def _rescale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly onto 0..255 (values outside are clipped); flat images -> 0."""
    if not hi > lo:
        return np.zeros(arr.shape, np.uint8)
    out = (arr.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    np.clip(out, 0, 255, out=out)
    return np.rint(out).astype(np.uint8)


def _minmax(arr: np.ndarray) -> np.ndarray:
    finite = np.isfinite(arr) if arr.dtype.kind == "f" else None
    if finite is not None and not finite.all():
        arr = np.where(finite, arr, 0)
    return _rescale(arr, float(arr.min()), float(arr.max()))


# -------------------------------------------------------------------- PNG, JPEG & co (PIL)


@contextmanager
def _pil_errors(name: str, kind: str) -> Iterator[None]:
    try:
        yield
    except BadImageError:
        raise
    except Image.DecompressionBombError as err:
        raise BadImageError(name, f"rejected as a possible decompression bomb: {err}") from None
    except _DECODE_ERRORS as err:
        raise BadImageError(name, f"truncated or corrupt {kind}: {err}") from None


def _pil_open(fp: IO[bytes], name: str, kind: str) -> ImageFile.ImageFile:
    """Parse the header only (no pixel decoding)."""
    if kind == "WEBP":
        return WebPImagePlugin.WebPImageFile(fp, name)
    cls = next(c for _, k, c in _PIL_FORMATS if k == kind)
    return cls(fp, name)


def _turned_sideways(im: Image.Image) -> bool:
    """EXIF orientations 5-8 are displayed rotated by 90 degrees (width and height swap)."""
    return im.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)


def _read_pil(fp: IO[bytes], name: str, kind: str, max_pixels: int) -> np.ndarray:
    with _pil_errors(name, kind):
        im = _pil_open(fp, name, kind)
        _check_size(name, *im.size, max_pixels)
        im.load()  # PIL is lazy: decode now so damaged files fail here, with their name
        if kind in _EXIF_FORMATS:
            ImageOps.exif_transpose(im, in_place=True)  # phone photos: show as a viewer would
        return _pil_to_gray(im)


def _pil_to_gray(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "L":
        return np.asarray(im).copy()
    if mode.startswith("I") or mode == "F":  # 16-bit or 32-bit grayscale
        return _wide_to_uint8(np.asarray(im))
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in im.info):
        la = np.asarray(im.convert("LA"), dtype=np.uint16)  # LA, not La: straight alpha
        gray = (la[..., 0] * la[..., 1] + 127) // 255  # composite onto black
        return gray.astype(np.uint8)
    try:
        # RGB uses ITU-R 601 weights summing to exactly 1, so equal channels come back as is.
        return np.asarray(im.convert("L")).copy()
    except ValueError:  # modes PIL cannot take straight to L (e.g. LAB)
        return np.asarray(im.convert("RGB").convert("L")).copy()


def _wide_to_uint8(arr: np.ndarray) -> np.ndarray:
    """16/32-bit gray to 8 bits by its actual range (min-max).

    An 8-bit image that was only widened (each value times 257, as libpng and PIL do, or
    shifted left by 8) is narrowed back exactly, so the same picture gives the same pixels
    whatever container it came in.
    """
    if arr.dtype.kind in "ui" and arr.size and arr.min() >= 0 and arr.max() <= 0xFFFF:
        wide = arr.astype(np.uint32)
        if not (wide % 257).any():
            return (wide // 257).astype(np.uint8)
        if not (wide & 0xFF).any():
            return (wide >> 8).astype(np.uint8)
    return _minmax(arr)


# ------------------------------------------------------------------------------ DICOM


def _pydicom() -> Any:
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401 - the processing functions used below
    except ImportError:
        return None
    return pydicom


def _dcmread(fp: IO[bytes], name: str, *, pixels: bool = False) -> Any:
    pydicom = _pydicom()
    if pydicom is None:
        raise BadImageError(
            name, "is a DICOM file; reading DICOM needs pydicom: pip install murakit[dicom]"
        )
    has_preamble = fp.read(132)[128:132] == b"DICM"
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, force=not has_preamble, stop_before_pixels=not pixels)
    except Exception as err:  # pydicom raises many types for damaged files
        raise BadImageError(name, f"truncated or corrupt DICOM: {err}") from None
    return ds


def _dicom_size(ds: Any, name: str) -> tuple[int, int]:
    if "Rows" not in ds or "Columns" not in ds:
        raise BadImageError(
            name, "unsupported DICOM: no image (Rows/Columns missing; a report or other object?)"
        )
    return int(ds.Columns), int(ds.Rows)


def _read_dicom(fp: IO[bytes], name: str, max_pixels: int) -> np.ndarray:
    """Decode the first frame and map it to display gray levels, bone bright.

    Order follows the DICOM display pipeline: modality LUT (rescale to physical units),
    then the VOI LUT or window the producer chose (else min-max), then MONOCHROME1 is
    inverted, since there the lowest value is meant to be shown white.
    """
    ds = _dcmread(fp, name, pixels=True)
    _check_size(name, *_dicom_size(ds, name), max_pixels)
    if "PixelData" not in ds:
        raise BadImageError(name, "unsupported DICOM: no pixel data")
    _ensure_transfer_syntax(ds)
    from pydicom.pixels import apply_color_lut, pixel_array

    try:
        arr = pixel_array(ds, index=0)  # first frame only, also for multi-frame files
    except Exception as err:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        what = getattr(syntax, "name", syntax) or "unknown transfer syntax"
        raise BadImageError(
            name, f"unsupported DICOM: cannot decode pixel data ({what}): {_one_line(err)}"
        ) from None

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise BadImageError(name, f"unsupported DICOM: {photometric} with shape {arr.shape}")
        gray = _dicom_display(arr, ds)
        return 255 - gray if photometric == "MONOCHROME1" else gray
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise BadImageError(name, f"unsupported DICOM: photometric interpretation {photometric!r}")
    # pixel_array already turned YBR into RGB; weigh channels as PIL's RGB->L does.
    luma = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return _rescale(luma, 0, 2 ** int(ds.get("BitsStored", 8)) - 1)


@dataclass(frozen=True)
class DicomValues:
    """A grayscale DICOM's first frame as values after the modality LUT (physical units),
    with the window the file suggests: what a viewer needs for window/level. No header
    field beyond these display attributes is kept."""

    values: np.ndarray  # (H, W) float32
    window_center: float | None
    window_width: float | None
    invert: bool  # MONOCHROME1: low values are shown white


def read_dicom_values(data: bytes, name: str = "upload") -> DicomValues:
    """The display values of a MONOCHROME1/2 DICOM in memory (the same modality LUT the
    reader applies before windowing); BadImageError for anything else."""
    ds = _dcmread(io.BytesIO(data), name, pixels=True)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise BadImageError(name, f"not grayscale DICOM ({photometric})")
    _ensure_transfer_syntax(ds)
    from pydicom.pixels import apply_modality_lut, pixel_array

    try:
        values = np.asarray(apply_modality_lut(pixel_array(ds, index=0), ds), np.float32)
    except Exception as err:
        raise BadImageError(name, f"cannot decode pixel data: {_one_line(err)}") from None
    if values.ndim != 2:
        raise BadImageError(name, f"unsupported DICOM: {photometric} with shape {values.shape}")
    center, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
    return DicomValues(values, center, width, photometric == "MONOCHROME1")


def _first_number(value: Any) -> float | None:
    """A DICOM DS/IS value, or the first of several (a file may offer several windows)."""
    if value is None:
        return None
    try:
        several = hasattr(value, "__len__") and not isinstance(value, (str, bytes))
        number = float(value[0] if several else value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) else None


def _one_line(err: Exception) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _ensure_transfer_syntax(ds: Any) -> None:
    """Files without a preamble often lack file meta; infer the syntax from how they parsed."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _dicom_display(arr: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds)
    if ds.get("VOILUTSequence") and values.dtype.kind == "f":
        values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
    if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        try:
            shown = apply_voi_lut(values, ds)
            lo, hi = _voi_output_range(ds)
            return _rescale(shown, lo, hi)
        except (ValueError, TypeError, IndexError, KeyError, NotImplementedError):
            pass  # a malformed window should not make the image unreadable: use min-max
    return _minmax(np.asarray(values))


def _voi_output_range(ds: Any) -> tuple[float, float]:
    """The range pydicom's VOI step maps onto (it depends on bit depth and rescale)."""
    from pydicom.pixels import apply_voi_lut

    if ds.get("VOILUTSequence"):
        entries, first = ds.VOILUTSequence[0].LUTDescriptor[:2]
        probe = np.arange(first, first + (entries or 2**16), dtype=np.int64)
    else:
        probe = np.array([-1e30, 1e30])  # far below and above any window
    with np.errstate(over="ignore"):
        out = apply_voi_lut(probe, ds)
    return float(np.min(out)), float(np.max(out))
