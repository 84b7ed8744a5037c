"""Real files of every kind that enters murakit by mistake or in an unusual container.

Each writer puts actual bytes on disk (no mocks), so the tests see exactly what a user's
copy of MURA, a hospital export or a phone upload would hold. Used by test_bad_input.py and,
for DICOM, by the IO, prediction, web-app and browser tests.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def zero_byte(path: Path) -> None:
    path.write_bytes(b"")


def truncated_png(path: Path, source: Path | None = None) -> None:
    """A real PNG (`source`, else a noise image written here) cut off in its pixel data."""
    if source is None:
        noise = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
        Image.fromarray(noise).save(path)
        source = path
    data = Path(source).read_bytes()
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    path.write_bytes(data[: idat + 4 + length // 2])  # half of the first IDAT chunk


def text_as_png(path: Path) -> None:
    path.write_text("patient 42, left wrist: see attached report\n")


def png_bomb_bytes(width: int = 20000, height: int = 20000) -> bytes:
    """A valid-looking 8-bit gray PNG whose header claims width x height pixels (400 MP by
    default) in a few hundred bytes: decoding it would need gigabytes. Built by hand since
    PIL takes seconds to make a real one."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)  # the first 4 rows; enough to look real
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> None:
    path.write_bytes(png_bomb_bytes(width, height))


def appledouble(path: Path) -> None:
    """What macOS leaves as `._image1.png` beside `image1.png` on non-HFS volumes."""
    header = b"\x00\x05\x16\x07" + b"\x00\x02\x00\x00" + b"Mac OS X        " + b"\x00\x02"
    entries = struct.pack(">III", 9, 50, 32) + struct.pack(">III", 2, 82, 3700)
    path.write_bytes((header + entries).ljust(4096, b"\x00"))


# Bad files, by the name the tests use for them.
BAD_WRITERS: dict[str, Callable[[Path], None]] = {
    "zero_byte": zero_byte,
    "truncated": truncated_png,
    "text_as_png": text_as_png,
    "bomb": bomb_png,
}


# ---------------------------------------------------------------- valid but unusual containers


def gray_16bit_png(path: Path, gray: np.ndarray) -> None:
    """The 8-bit picture widened to 16 bits as libpng does (value x 257)."""
    Image.fromarray(gray.astype(np.uint16) * 257).save(path, "PNG")


def rgba_png(path: Path, gray: np.ndarray) -> None:
    """Equal colour channels, fully opaque alpha."""
    alpha = np.full_like(gray, 255)
    Image.fromarray(np.dstack([gray, gray, gray, alpha]), "RGBA").save(path, "PNG")


def palette_png(path: Path, gray: np.ndarray) -> None:
    """Mode P with a 256-entry gray palette (index i is gray level i)."""
    im = Image.fromarray(gray, "L").convert("P")  # keeps indices, sets a gray palette
    im.putpalette([v for i in range(256) for v in (i, i, i)])
    im.save(path, "PNG")


def cmyk_jpeg(path: Path, gray: np.ndarray) -> None:
    Image.fromarray(gray, "L").convert("RGB").convert("CMYK").save(path, "JPEG", quality=95)


UNUSUAL_WRITERS: dict[str, Callable[[Path, np.ndarray], None]] = {
    "gray16": gray_16bit_png,
    "rgba": rgba_png,
    "palette": palette_png,
    "cmyk": cmyk_jpeg,
}
UNUSUAL_SUFFIX = {"gray16": ".png", "rgba": ".png", "palette": ".png", "cmyk": ".jpg"}


def write_dicom(
    path: Path | BinaryIO,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    preamble: bool = True,
    **elements,
) -> Path | BinaryIO:
    """A minimal but valid DX image, written by pydicom itself, to a path or a binary file
    object (for uploads held in memory). Needs pydicom: callers skip without it."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    frames = pixels.shape[0] if pixels.ndim == 3 and photometric.startswith("MONO") else 1
    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[-2:] if frames > 1 else pixels.shape[:2]
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    else:  # a bare dataset: no preamble, no file meta (older devices write these)
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return path
