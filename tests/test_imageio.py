"""Image reading: every supported format and every bad input, with real files on disk."""

from __future__ import annotations

import importlib.util
import io
import pickle
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_files import write_dicom
from murakit.data.imageio import (
    MAX_PIXELS,
    BadImageError,
    image_size,
    read_grayscale,
    read_grayscale_bytes,
)


def gradient(h: int = 48, w: int = 64) -> np.ndarray:
    """Every value 0..255 appears, so min-max scaling would change nothing."""
    return (np.arange(h * w).reshape(h, w) * 7 % 256).astype(np.uint8)


def save(tmp_path: Path, name: str, im: Image.Image, **params) -> Path:
    path = tmp_path / name
    im.save(path, **params)
    return path


def reject(path: Path | str, **kwargs) -> BadImageError:
    """Read a file that must be rejected; the message must name the file."""
    with pytest.raises(BadImageError) as info:
        read_grayscale(path, **kwargs)
    assert str(info.value).startswith(f"{path}: ")
    assert info.value.path == str(path)
    return info.value


# ------------------------------------------------------------------- PNG and friends


def test_8bit_png_round_trip(tmp_path):
    img = gradient()
    out = read_grayscale(save(tmp_path, "a.png", Image.fromarray(img)))
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


def test_rgb_with_equal_channels_is_that_channel(tmp_path):
    img = gradient()
    rgb = Image.fromarray(np.stack([img] * 3, axis=-1), "RGB")
    np.testing.assert_array_equal(read_grayscale(save(tmp_path, "rgb.png", rgb)), img)


def test_rgb_colours_use_luma_weights(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    out = read_grayscale(save(tmp_path, "red.png", Image.fromarray(rgb, "RGB")))
    assert np.all(out == 76)  # 0.299 * 255


def test_rgba_is_composited_onto_black(tmp_path):
    img = gradient()
    alpha = np.tile(np.array([0, 128, 255], np.uint8), (48, 22))[:, :64]
    rgba = np.dstack([img, img, img, alpha])
    out = read_grayscale(save(tmp_path, "rgba.png", Image.fromarray(rgba, "RGBA")))
    expected = np.rint(img.astype(float) * alpha / 255)
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert np.all(out[alpha == 0] == 0)
    np.testing.assert_array_equal(out[alpha == 255], img[alpha == 255])


def test_la_is_composited_onto_black(tmp_path):
    img = gradient()
    alpha = np.full_like(img, 255)
    alpha[:, :32] = 0
    la = Image.fromarray(np.dstack([img, alpha]), "LA")
    out = read_grayscale(save(tmp_path, "la.png", la))
    assert np.all(out[:, :32] == 0)
    np.testing.assert_array_equal(out[:, 32:], img[:, 32:])


def test_palette_png_goes_through_its_palette(tmp_path):
    index = gradient()
    im = Image.fromarray(index, "P")
    im.putpalette([v for i in range(256) for v in (255 - i,) * 3])  # an inverting palette
    out = read_grayscale(save(tmp_path, "p.png", im))
    np.testing.assert_array_equal(out, 255 - index)


def test_palette_transparency_is_black(tmp_path):
    index = np.full((8, 8), 1, np.uint8)
    index[:4] = 0
    im = Image.fromarray(index, "P")
    im.putpalette([200, 200, 200, 90, 90, 90] + [0] * 762)
    out = read_grayscale(save(tmp_path, "pt.png", im, transparency=0))
    assert np.all(out[:4] == 0) and np.all(out[4:] == 90)


def test_16bit_png_of_8bit_image_times_257_is_exact(tmp_path):
    img = (gradient() // 2 + 20).astype(np.uint8)  # not full range: min-max would stretch it
    im16 = Image.fromarray(img.astype(np.uint16) * 257)
    path = save(tmp_path, "wide.png", im16)
    assert Image.open(path).mode.startswith("I")  # really stored as 16 bits
    np.testing.assert_array_equal(read_grayscale(path), img)


def test_16bit_png_is_scaled_by_its_actual_range(tmp_path):
    raw = np.linspace(1000, 4000, 48 * 64).reshape(48, 64).astype(np.uint16)  # 12-bit data
    out = read_grayscale(save(tmp_path, "twelve.png", Image.fromarray(raw)))
    assert out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    expected = np.rint((raw - 1000.0) * 255 / 3000)
    assert np.abs(out - expected).max() <= 1


def test_1bit_png_is_0_or_255(tmp_path):
    bits = gradient() > 127
    out = read_grayscale(save(tmp_path, "bits.png", Image.fromarray(bits)))
    np.testing.assert_array_equal(out, np.where(bits, 255, 0))


def test_gray_jpeg_matches_decoder(tmp_path):
    path = save(tmp_path, "g.jpg", Image.fromarray(gradient()), quality=95)
    np.testing.assert_array_equal(read_grayscale(path), np.asarray(Image.open(path)))


def test_cmyk_jpeg_becomes_gray(tmp_path):
    img = np.repeat(np.linspace(0, 255, 64), 48).reshape(64, 48).T.astype(np.uint8)  # smooth
    zeros = np.zeros_like(img)
    cmyk = Image.fromarray(np.dstack([zeros, zeros, zeros, 255 - img]), "CMYK")
    path = save(tmp_path, "cmyk.jpg", cmyk, quality=95)
    assert Image.open(path).mode == "CMYK"
    out = read_grayscale(path)
    assert out.shape == img.shape
    assert np.abs(out.astype(int) - img).mean() < 3


def test_jpeg_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(tmp_path, "phone.jpg", Image.fromarray(gradient(48, 64)), exif=exif)
    assert read_grayscale(path).shape == (64, 48)
    assert image_size(path) == (48, 64)


def test_bmp_and_tiff(tmp_path):
    img = gradient()
    for name in ("a.bmp", "a.tif"):
        np.testing.assert_array_equal(
            read_grayscale(save(tmp_path, name, Image.fromarray(img))), img
        )


def test_format_comes_from_content_not_name(tmp_path):
    img = gradient()
    path = tmp_path / "really_a_png.jpg"
    Image.fromarray(img).save(path, format="PNG")
    np.testing.assert_array_equal(read_grayscale(path), img)


def test_bytes_and_path_agree_and_size_is_read_from_header(tmp_path):
    img = gradient(30, 50)
    path = save(tmp_path, "a.png", Image.fromarray(img))
    np.testing.assert_array_equal(read_grayscale_bytes(path.read_bytes(), "upload.png"), img)
    assert image_size(path) == (50, 30)


# ------------------------------------------------------------------------------- DICOM

needs_pydicom = pytest.mark.skipif(
    importlib.util.find_spec("pydicom") is None, reason="pydicom (murakit[dicom]) not installed"
)


def bone_phantom(background: int, bone: int, dtype=np.uint16) -> np.ndarray:
    """A square of 'bone' on a background, in stored pixel values."""
    img = np.full((40, 60), background, dtype)
    img[10:30, 20:40] = bone
    return img


@needs_pydicom
def test_dicom_rescale_then_window(tmp_path):
    stored = bone_phantom(100, 3000)
    stored[0, 0] = 1550  # 2100 after rescale: the window's centre -> mid gray
    stored[0, 1] = 4000  # above the window -> white
    path = write_dicom(
        tmp_path / "dx.dcm",
        stored,
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=2100,
        WindowWidth=5800,
    )
    out = read_grayscale(path)
    assert out.dtype == np.uint8 and out.shape == (40, 60)
    assert out[5, 5] == 0  # background: -800 after rescale, the window's bottom
    assert np.all(out[10:30, 20:40] == 255)  # bone: 5000, the window's top
    assert abs(int(out[0, 0]) - 128) <= 1
    assert out[0, 1] == 255


@needs_pydicom
def test_dicom_voi_lut_sequence_is_applied(tmp_path):
    from pydicom.dataset import Dataset

    lut = Dataset()  # an inverting 12-bit -> 16-bit lookup table
    lut.LUTDescriptor = [4096, 0, 16]
    lut.add_new(0x00283006, "US", [int(v) * 16 for v in range(4095, -1, -1)])  # LUTData
    path = write_dicom(
        tmp_path / "voi.dcm", bone_phantom(100, 3000), bits_stored=12, VOILUTSequence=[lut]
    )
    out = read_grayscale(path)
    assert out[5, 5] == round(255 * 3995 / 4095)
    assert out[20, 30] == round(255 * 1095 / 4095)


@needs_pydicom
def test_dicom_compressed_rle_and_undecodable_jpeg_ls(tmp_path):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless, RLELossless

    path = write_dicom(tmp_path / "rle.dcm", bone_phantom(500, 2500), bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)  # pydicom's own encoder, no plugin needed
    ds.save_as(path, enforce_file_format=True)
    out = read_grayscale(path)
    assert out[5, 5] == 0 and out[20, 30] == 255

    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8 not really JPEG-LS"])
    ds.save_as(path, enforce_file_format=True)
    problem = reject(path).problem
    assert problem.startswith("unsupported DICOM: cannot decode pixel data (JPEG-LS")
    assert "\n" not in problem


@needs_pydicom
def test_dicom_without_window_uses_min_max(tmp_path):
    stored = bone_phantom(500, 2500)
    out = read_grayscale(write_dicom(tmp_path / "mm.dcm", stored, bits_stored=12))
    assert out[5, 5] == 0 and out[20, 30] == 255


@needs_pydicom
def test_dicom_monochrome1_is_inverted_so_bone_stays_bright(tmp_path):
    stored = bone_phantom(3000, 200)  # MONOCHROME1: low values are displayed white
    mono1 = read_grayscale(write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", 12))
    mono2 = read_grayscale(write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2", 12))
    assert np.all(mono1[10:30, 20:40] == 255) and mono1[5, 5] == 0
    np.testing.assert_array_equal(mono1, 255 - mono2)


@needs_pydicom
def test_dicom_8bit(tmp_path):
    img = gradient()
    np.testing.assert_array_equal(read_grayscale(write_dicom(tmp_path / "8.dcm", img)), img)


@needs_pydicom
def test_dicom_multiframe_gives_first_frame(tmp_path):
    img = gradient()
    frames = np.stack([img, 255 - img])
    np.testing.assert_array_equal(read_grayscale(write_dicom(tmp_path / "mf.dcm", frames)), img)


@needs_pydicom
def test_dicom_rgb_with_equal_channels(tmp_path):
    img = gradient()
    rgb = np.ascontiguousarray(np.stack([img] * 3, axis=-1))
    np.testing.assert_array_equal(read_grayscale(write_dicom(tmp_path / "c.dcm", rgb, "RGB")), img)


@needs_pydicom
def test_dicom_found_by_content_even_without_preamble_or_extension(tmp_path):
    img = gradient()
    path = write_dicom(tmp_path / "IM0001", img, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_grayscale(path), img)
    np.testing.assert_array_equal(read_grayscale_bytes(path.read_bytes(), "x"), img)
    assert image_size(path) == (64, 48)


@needs_pydicom
def test_dicom_size_guard_runs_before_decoding(tmp_path):
    path = write_dicom(tmp_path / "big.dcm", gradient(), Rows=20000, Columns=20000)
    assert "20000x20000 = 400 megapixels" in reject(path).problem


@needs_pydicom
def test_dicom_without_pixels_is_rejected(tmp_path):
    path = write_dicom(tmp_path / "sr.dcm", gradient())
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    assert reject(path).problem.startswith("unsupported DICOM")


def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "a.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\2\0\0\0UL\4\0" + b"\0" * 4)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # what an absent package looks like
    assert "pip install murakit[dicom]" in reject(path).problem


# -------------------------------------------------------------------------- bad inputs


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert reject(path).problem == "file is empty (0 bytes)"


def test_truncated_png(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)
    data = io.BytesIO()
    Image.fromarray(noise).save(data, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    assert reject(path).problem.startswith("truncated or corrupt PNG")


def test_text_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    problem = reject(path).problem
    assert problem.startswith("not an image: content is text (starts with b'this is not")


def test_git_lfs_pointer_is_named(tmp_path):
    path = tmp_path / "image1.png"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
    assert "Git LFS pointer" in reject(path).problem


def test_unknown_binary(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(bytes(range(256)))
    assert "unknown binary data" in reject(path).problem


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but holds no real pixel data: decoding would fail."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"x") + chunk(b"IEND", b"")


def test_decompression_bomb_rejected_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20000, 20000))
    err = reject(path)
    assert err.problem == (
        "image is 20000x20000 = 400 megapixels, above the 100-megapixel limit "
        "(possible decompression bomb)"
    )
    assert MAX_PIXELS == 100_000_000
    assert image_size(path) == (20000, 20000)  # the header alone is fine to read


def test_size_limit_can_be_lowered(tmp_path):
    path = save(tmp_path, "a.png", Image.fromarray(gradient(48, 64)))
    problem = reject(path, max_pixels=3000).problem
    assert problem.startswith("image is 64x48 = 0.0031 megapixels, above the 0.003-megapixel")
    assert read_grayscale(path, max_pixels=3072).shape == (48, 64)


def test_missing_file_and_directory(tmp_path):
    assert reject(tmp_path / "nope.png").problem == "file not found"
    assert "directory" in reject(tmp_path).problem


def test_bytes_errors_use_the_given_name():
    with pytest.raises(BadImageError, match=r"^upload\.png: file is empty"):
        read_grayscale_bytes(b"", "upload.png")


def test_error_is_a_value_error_and_pickles():
    err = BadImageError("a/b.png", "file not found")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.problem, str(again)) == ("a/b.png", "file not found", str(err))
