"""Tests for cnnspark.formats: magic-byte sniffing and header inspection.

Valid samples are real files written into a temporary directory by Pillow and
tifffile; the expected header facts are what was written.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import random
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, features

from cnnspark.formats import (
    REASON_CORRUPT_HEADER,
    REASON_EMPTY,
    REASON_NOT_IMAGE,
    REASON_TRUNCATED,
    REASONS,
    ImageInfo,
    InvalidImage,
    inspect_image,
    sniff_format,
)

WIDTH, HEIGHT = 37, 23
HAS_WEBP = features.check("webp")


# --------------------------------------------------------------------------- sample files


def _noise(channels: int, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    high = np.iinfo(dtype).max
    shape = (HEIGHT, WIDTH) if channels == 1 else (HEIGHT, WIDTH, channels)
    return rng.integers(0, high, shape, dtype=dtype, endpoint=True)


def _pil_image(mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(_noise(1, np.uint16)).convert("I;16")
    if mode in ("L", "1"):
        return Image.fromarray(_noise(1)).convert(mode)
    if mode == "P":
        return Image.fromarray(_noise(3)).convert("P", palette=Image.Palette.ADAPTIVE)
    return Image.fromarray(_noise(4)).convert(mode)


# name -> (writer(path), suffix, expected (format, width, height, channels, bit_depth, pages))
def _pil_writer(mode: str, fmt: str, **options):
    def write(path: Path) -> None:
        _pil_image(mode).save(path, fmt, **options)

    return write


def _tiff_writer(data: np.ndarray, **options):
    def write(path: Path) -> None:
        tifffile.imwrite(path, data, **options)

    return write


def _animated_gif(path: Path) -> None:
    frames = [Image.fromarray(_noise(3, seed=s)).convert("P") for s in range(3)]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100)


SAMPLES = {
    "png_gray": (_pil_writer("L", "PNG"), ".png", ("png", WIDTH, HEIGHT, 1, 8, 1)),
    "png_gray_alpha": (_pil_writer("LA", "PNG"), ".png", ("png", WIDTH, HEIGHT, 2, 8, 1)),
    "png_rgb": (_pil_writer("RGB", "PNG"), ".png", ("png", WIDTH, HEIGHT, 3, 8, 1)),
    "png_rgba": (_pil_writer("RGBA", "PNG"), ".png", ("png", WIDTH, HEIGHT, 4, 8, 1)),
    "png_gray16": (_pil_writer("I;16", "PNG"), ".png", ("png", WIDTH, HEIGHT, 1, 16, 1)),
    "png_palette": (_pil_writer("P", "PNG"), ".png", ("png", WIDTH, HEIGHT, 3, 8, 1)),
    "png_bilevel": (_pil_writer("1", "PNG"), ".png", ("png", WIDTH, HEIGHT, 1, 1, 1)),
    "jpeg_rgb": (_pil_writer("RGB", "JPEG", quality=90), ".jpg", ("jpeg", WIDTH, HEIGHT, 3, 8, 1)),
    "jpeg_gray": (_pil_writer("L", "JPEG"), ".jpg", ("jpeg", WIDTH, HEIGHT, 1, 8, 1)),
    "jpeg_progressive": (
        _pil_writer("RGB", "JPEG", progressive=True),
        ".jpg",
        ("jpeg", WIDTH, HEIGHT, 3, 8, 1),
    ),
    "bmp_rgb": (_pil_writer("RGB", "BMP"), ".bmp", ("bmp", WIDTH, HEIGHT, 3, 8, 1)),
    "bmp_rgba": (_pil_writer("RGBA", "BMP"), ".bmp", ("bmp", WIDTH, HEIGHT, 4, 8, 1)),
    "bmp_palette": (_pil_writer("P", "BMP"), ".bmp", ("bmp", WIDTH, HEIGHT, 3, 8, 1)),
    "gif": (_pil_writer("P", "GIF"), ".gif", ("gif", WIDTH, HEIGHT, 3, 8, 1)),
    "gif_animated": (_animated_gif, ".gif", ("gif", WIDTH, HEIGHT, 3, 8, 3)),
    "tiff_rgb8": (
        _tiff_writer(_noise(3), photometric="rgb"),
        ".tif",
        ("tiff", WIDTH, HEIGHT, 3, 8, 1),
    ),
    "tiff_gray16": (_tiff_writer(_noise(1, np.uint16)), ".tif", ("tiff", WIDTH, HEIGHT, 1, 16, 1)),
    "tiff_3pages": (
        _tiff_writer(np.stack([_noise(1, seed=s) for s in range(3)]), photometric="minisblack"),
        ".tif",
        ("tiff", WIDTH, HEIGHT, 1, 8, 3),
    ),
    "tiff_tiled": (
        _tiff_writer(_noise(3), photometric="rgb", tile=(16, 16)),
        ".tif",
        ("tiff", WIDTH, HEIGHT, 3, 8, 1),
    ),
    "tiff_big_endian": (
        _tiff_writer(_noise(1, np.uint16), byteorder=">"),
        ".tif",
        ("tiff", WIDTH, HEIGHT, 1, 16, 1),
    ),
    "bigtiff": (
        _tiff_writer(
            np.stack([_noise(3, seed=s) for s in range(2)]), photometric="rgb", bigtiff=True
        ),
        ".tif",
        ("tiff", WIDTH, HEIGHT, 3, 8, 2),
    ),
}
if HAS_WEBP:
    SAMPLES |= {
        "webp_lossy": (_pil_writer("RGB", "WEBP"), ".webp", ("webp", WIDTH, HEIGHT, 3, 8, 1)),
        "webp_lossless": (
            _pil_writer("RGB", "WEBP", lossless=True),
            ".webp",
            ("webp", WIDTH, HEIGHT, 4, 8, 1),
        ),
        "webp_alpha": (_pil_writer("RGBA", "WEBP"), ".webp", ("webp", WIDTH, HEIGHT, 4, 8, 1)),
    }


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("images")
    written = {}
    for name, (write, suffix, _) in SAMPLES.items():
        path = folder / f"{name}{suffix}"
        write(path)
        written[name] = path.read_bytes()
    return written


def _reason(data: bytes) -> str:
    with pytest.raises(InvalidImage) as caught:
        inspect_image(data)
    assert caught.value.reason in REASONS
    assert str(caught.value)  # says what is wrong in words
    return caught.value.reason


# --------------------------------------------------------------------------- valid files


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_header_facts_match_what_was_written(samples, name):
    info = inspect_image(samples[name])
    got = (info.format, info.width, info.height, info.channels, info.bit_depth, info.pages)
    assert got == SAMPLES[name][2]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sniff_format_reads_the_first_16_bytes(samples, name):
    assert sniff_format(samples[name][:16]) == SAMPLES[name][2][0]


def test_accepts_bytearray_and_memoryview(samples):
    data = samples["png_rgb"]
    expected = inspect_image(data)
    assert inspect_image(bytearray(data)) == expected
    assert inspect_image(memoryview(data)) == expected
    padded = b"xx" + data + b"yy"
    assert inspect_image(memoryview(padded)[2:-2]) == expected


def test_format_comes_from_magic_not_extension(samples, tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_bytes(samples["jpeg_rgb"])
    info = inspect_image(fake.read_bytes())
    assert info.format == "jpeg"
    assert (info.width, info.height) == (WIDTH, HEIGHT)


def test_jpeg_trailing_zero_padding_is_allowed(samples):
    assert inspect_image(samples["jpeg_rgb"] + bytes(5000)).format == "jpeg"


def test_bmp_top_down_reports_absolute_height(samples):
    data = bytearray(samples["bmp_rgb"])
    (height,) = struct.unpack_from("<i", data, 22)
    struct.pack_into("<i", data, 22, -height)
    assert inspect_image(bytes(data)).height == HEIGHT


def test_image_info_is_frozen(samples):
    info = inspect_image(samples["gif"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.width = 1  # type: ignore[misc]


def test_invalid_image_pickles_with_reason():
    error = pickle.loads(pickle.dumps(InvalidImage(REASON_TRUNCATED, "cut short")))
    assert (error.reason, str(error)) == (REASON_TRUNCATED, "cut short")


def test_reason_codes():
    assert REASONS == ("zero_bytes", "not_an_image", "truncated", "corrupt_header")


# --------------------------------------------------------------------------- not images


def test_empty_bytes():
    assert _reason(b"") == REASON_EMPTY


def test_text_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("just some notes, not an image\n" * 20)
    assert _reason(path.read_bytes()) == REASON_NOT_IMAGE


def test_zip_file():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", "hello")
    assert _reason(buffer.getvalue()) == REASON_NOT_IMAGE


def test_random_bytes():
    data = b"\x00" + random.Random(1234).randbytes(4095)
    assert sniff_format(data[:16]) is None
    assert _reason(data) == REASON_NOT_IMAGE


def test_riff_that_is_not_webp():
    assert _reason(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28)) == REASON_NOT_IMAGE


def test_start_of_a_signature_is_truncated():
    assert _reason(b"\x89PNG") == REASON_TRUNCATED
    assert _reason(b"GIF8") == REASON_TRUNCATED


# --------------------------------------------------------------------------- truncated


def test_png_cut_in_half(samples):
    data = samples["png_rgb"]
    assert _reason(data[: len(data) // 2]) == REASON_TRUNCATED


def test_png_without_iend(samples):
    assert _reason(samples["png_rgb"][:-12]) == REASON_TRUNCATED


def test_jpeg_missing_last_100_bytes(samples):
    assert _reason(samples["jpeg_rgb"][:-100]) == REASON_TRUNCATED


def test_jpeg_cut_before_frame_header(samples):
    assert _reason(samples["jpeg_rgb"][:30]) == REASON_TRUNCATED


@pytest.mark.parametrize("name", ["tiff_rgb8", "tiff_3pages", "tiff_tiled", "bigtiff"])
def test_tiff_cut_in_half(samples, name):
    data = samples[name]
    assert _reason(data[: len(data) // 2]) == REASON_TRUNCATED


def test_tiff_ifd_offset_past_end(samples):
    data = bytearray(samples["tiff_rgb8"])
    struct.pack_into("<I", data, 4, 123456)
    assert "123456" in str(pytest.raises(InvalidImage, inspect_image, bytes(data)).value)
    assert _reason(bytes(data)) == REASON_TRUNCATED


def test_bmp_missing_pixel_rows(samples):
    assert _reason(samples["bmp_rgb"][:-200]) == REASON_TRUNCATED


def test_gif_without_trailer(samples):
    assert _reason(samples["gif"][:-1]) == REASON_TRUNCATED


@pytest.mark.skipif(not HAS_WEBP, reason="Pillow built without WebP")
def test_webp_shorter_than_riff_size(samples):
    assert _reason(samples["webp_lossy"][:-10]) == REASON_TRUNCATED


# --------------------------------------------------------------------------- corrupt headers


def _png_with_ihdr(data: bytes, **fields: int) -> bytes:
    """Rewrite IHDR fields (bit_depth, colour_type, width) with a valid CRC."""
    out = bytearray(data)
    if "width" in fields:
        struct.pack_into(">I", out, 16, fields["width"])
    if "bit_depth" in fields:
        out[24] = fields["bit_depth"]
    if "colour_type" in fields:
        out[25] = fields["colour_type"]
    struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
    return bytes(out)


def test_png_ihdr_crc_flipped(samples):
    data = bytearray(samples["png_rgb"])
    data[29] ^= 0xFF
    assert _reason(bytes(data)) == REASON_CORRUPT_HEADER


def test_png_rewritten_ihdr_is_still_valid(samples):
    assert inspect_image(_png_with_ihdr(samples["png_rgb"], width=99)).width == 99


@pytest.mark.parametrize(
    "fields",
    [
        {"bit_depth": 1, "colour_type": 2},
        {"bit_depth": 16, "colour_type": 3},
        {"bit_depth": 3, "colour_type": 0},
        {"colour_type": 5},
        {"width": 0},
    ],
)
def test_png_invalid_ihdr_values(samples, fields):
    assert _reason(_png_with_ihdr(samples["png_rgb"], **fields)) == REASON_CORRUPT_HEADER


def test_png_ihdr_not_first(samples):
    data = samples["png_rgb"]
    text = b"tEXt" + b"k\x00v"
    chunk = struct.pack(">I", 3) + text + struct.pack(">I", zlib.crc32(text))
    message = str(pytest.raises(InvalidImage, inspect_image, data[:8] + chunk + data[8:]).value)
    assert "IHDR" in message
    assert _reason(data[:8] + chunk + data[8:]) == REASON_CORRUPT_HEADER


def test_jpeg_scan_before_frame_header():
    assert _reason(b"\xff\xd8\xff\xda\x00\x08" + bytes(6) + b"\xff\xd9") == REASON_CORRUPT_HEADER


def test_jpeg_garbage_between_segments(samples):
    data = bytearray(samples["jpeg_rgb"])
    (app_length,) = struct.unpack_from(">H", data, 4)
    data[4 + app_length] = 0x12  # where the next marker's 0xFF should be
    assert _reason(bytes(data)) == REASON_CORRUPT_HEADER


def test_bmp_unknown_dib_header_size(samples):
    data = bytearray(samples["bmp_rgb"])
    struct.pack_into("<I", data, 14, 77)
    assert _reason(bytes(data)) == REASON_CORRUPT_HEADER


def _first_ifd(data: bytes) -> tuple[int, int]:
    """(offset, entry count) of the first IFD of a little-endian classic TIFF."""
    (offset,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, offset)
    return offset, count


def test_tiff_ifd_loop(samples):
    data = bytearray(samples["tiff_3pages"])
    offset, count = _first_ifd(data)
    struct.pack_into("<I", data, offset + 2 + 12 * count, offset)  # next IFD = itself
    assert _reason(bytes(data)) == REASON_CORRUPT_HEADER


def test_tiff_missing_width(samples):
    data = bytearray(samples["tiff_rgb8"])
    offset, count = _first_ifd(data)
    for entry in range(offset + 2, offset + 2 + 12 * count, 12):
        if struct.unpack_from("<H", data, entry)[0] == 256:
            struct.pack_into("<H", data, entry, 65000)  # an unrelated private tag
    message = str(pytest.raises(InvalidImage, inspect_image, bytes(data)).value)
    assert "ImageWidth" in message
    assert _reason(bytes(data)) == REASON_CORRUPT_HEADER


def test_gif_unknown_block(samples):
    data = bytearray(samples["gif"])
    flags = data[10]
    table = 3 << ((flags & 7) + 1) if flags & 0x80 else 0
    data[13 + table] = 0x99
    assert _reason(bytes(data)) == REASON_CORRUPT_HEADER


# --------------------------------------------------------------------------- robustness


def _prefix_lengths(size: int, count: int = 40) -> list[int]:
    return sorted(set(np.linspace(0, size - 1, count).astype(int).tolist()) | set(range(20)))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_prefix_is_rejected_as_invalid(samples, name):
    data = samples[name]
    full = inspect_image(data)
    for length in _prefix_lengths(len(data)):
        try:
            info = inspect_image(data[:length])
        except InvalidImage as error:
            if length == 0:
                assert error.reason == REASON_EMPTY
            elif length >= 16:
                assert error.reason == REASON_TRUNCATED, (length, str(error))
            else:
                assert error.reason in (REASON_NOT_IMAGE, REASON_TRUNCATED), (length, str(error))
        else:
            # Only a TIFF may end in bytes that nothing points to (tifffile
            # leaves a few after the last IFD); every other format has an end marker.
            assert full.format == "tiff" and info == full, length


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_single_byte_corruptions_raise_only_invalid_image(samples, name):
    data = samples[name]
    rng = random.Random(name)
    for trial in range(40):
        corrupted = bytearray(data)
        # Half the corruptions hit the headers, where the parsing happens.
        limit = min(len(data), 128) if trial % 2 else len(data)
        corrupted[rng.randrange(limit)] = rng.randrange(256)
        try:
            info = inspect_image(bytes(corrupted))
        except InvalidImage as error:
            assert error.reason in REASONS
        else:
            assert isinstance(info, ImageInfo)
