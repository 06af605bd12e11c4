"""Image format sniffing and header inspection, without decoding pixels.

Every file ingested by the Spark jobs passes through :func:`inspect_image`, so
this module is deliberately small, pure Python and dependency-free (``struct``
and ``zlib.crc32`` from the standard library). It identifies the format from
the *magic bytes* (never the file name), walks just enough of the file's
structure to read the header facts in :class:`ImageInfo`, and rejects empty,
unknown, truncated and corrupt files with :class:`InvalidImage`, whose
``reason`` is one of the ``REASON_*`` codes.

What each format reports and checks
-----------------------------------
``channels`` is the number of samples per pixel as stored, except that palette
images (PNG colour type 3, GIF, BMP with 1/2/4/8 bits per pixel) report 3: the
palette expands to RGB with 8-bit samples, so their ``bit_depth`` is 8.

* PNG: signature; IHDR first, 13 bytes long, correct CRC, non-zero size and a
  legal bit depth / colour type pair (else ``corrupt_header``); the chunk list
  is walked (data CRCs are not checked) and must reach IEND (else
  ``truncated``). Colour type 0/2/3/4/6 -> 1/3/3/2/4 channels.
* JPEG: FF D8 FF, then markers segment by segment up to the first SOFn, which
  gives precision, height, width and components. The data must end with EOI
  (FF D9), optionally followed by zero padding (else ``truncated``). A height
  of 0 (defined later by a DNL marker) is reported as ``None``.
* BMP: "BM", a DIB header of 12/40/52/56/64/108/124 bytes, non-zero size, one
  plane, a known bit count and compression. Height may be negative (top-down);
  its absolute value is reported. 1/2/4/8 bpp -> 3 channels of 8 bits
  (palette), 16 bpp -> 3 channels of 5 bits (the default X1R5G5B5 layout; bit
  field masks are not read), 24 bpp -> 3 x 8, 32 bpp -> 4 x 8, embedded
  JPEG/PNG (compression 4/5) -> ``None``. Uncompressed pixel rows (and the
  declared image size of compressed ones) must fit in the data (else
  ``truncated``). The file size field is not trusted: many writers get it
  wrong.
* TIFF and BigTIFF, either byte order: the IFD chain is walked to count pages
  (a repeated offset or more than ``MAX_TIFF_PAGES`` IFDs -> ``corrupt_header``;
  an IFD past the end -> ``truncated``). The first IFD gives ImageWidth,
  ImageLength, BitsPerSample (first value, default 1) and SamplesPerPixel
  (default 1), reported as stored (a palette TIFF reports 1 channel). In the
  first and the last IFD, the values of every tag and the strips or tiles must
  end inside the data (else ``truncated``); an IFD with neither strips nor
  tiles is ``corrupt_header``.
* GIF 87a/89a: logical screen size (0 -> ``None``), 3 channels of 8 bits. The
  block structure is walked to count image descriptors (``pages``) and must
  reach the trailer 0x3B (else ``truncated``); bytes after it are ignored.
* WebP: "RIFF" size "WEBP"; the data must hold the whole RIFF size (else
  ``truncated``). Size from the first chunk: VP8 (lossy, 3 channels), VP8L
  (lossless, stored as ARGB, 4 channels) or VP8X (canvas size; 4 channels when
  the alpha flag is set, else 3). 8 bits per sample, ``pages`` 1.

:func:`inspect_image` raises nothing but :class:`InvalidImage` for any
bytes-like input; an argument that is not bytes-like at all (e.g. ``str``) is a
programming error and raises ``TypeError``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ImageInfo",
    "InvalidImage",
    "REASONS",
    "REASON_CORRUPT_HEADER",
    "REASON_EMPTY",
    "REASON_NOT_IMAGE",
    "REASON_TRUNCATED",
    "inspect_image",
    "sniff_format",
]

REASON_EMPTY = "zero_bytes"
REASON_NOT_IMAGE = "not_an_image"
REASON_TRUNCATED = "truncated"
REASON_CORRUPT_HEADER = "corrupt_header"
REASONS = (REASON_EMPTY, REASON_NOT_IMAGE, REASON_TRUNCATED, REASON_CORRUPT_HEADER)

SNIFF_BYTES = 16
MAX_TIFF_PAGES = 100_000


@dataclass(frozen=True)
class ImageInfo:
    """Header facts of one image file (see the module docstring per format)."""

    format: str  # "png" | "jpeg" | "bmp" | "tiff" | "gif" | "webp"
    width: int | None
    height: int | None
    channels: int | None
    bit_depth: int | None
    pages: int = 1


class InvalidImage(Exception):
    """The data is not a readable image; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown InvalidImage reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self):  # keep it picklable for Spark (args differ from __init__'s)
        return (type(self), (self.reason, self.message))


def _truncated(message: str) -> InvalidImage:
    return InvalidImage(REASON_TRUNCATED, message)


def _corrupt(message: str) -> InvalidImage:
    return InvalidImage(REASON_CORRUPT_HEADER, message)


# --------------------------------------------------------------------------- magic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
BMP_MAGIC = b"BM"
GIF_MAGICS = (b"GIF87a", b"GIF89a")
TIFF_LE, TIFF_BE = b"II*\x00", b"MM\x00*"
BIGTIFF_LE, BIGTIFF_BE = b"II+\x00", b"MM\x00+"
TIFF_MAGICS = (TIFF_LE, TIFF_BE, BIGTIFF_LE, BIGTIFF_BE)
RIFF_MAGIC, WEBP_MAGIC = b"RIFF", b"WEBP"

# Signatures long and distinctive enough that data shorter than them which
# matches their start is a truncated image rather than something else.
_PREFIX_SIGNATURES = (PNG_SIGNATURE, *GIF_MAGICS, *TIFF_MAGICS)
_MIN_PREFIX = 3


def sniff_format(head: bytes) -> str | None:
    """Name the image format from the first (up to 16) bytes, or ``None``."""
    head = bytes(head[:SNIFF_BYTES])
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SOI):
        return "jpeg"
    if head.startswith(GIF_MAGICS):
        return "gif"
    if head.startswith(TIFF_MAGICS):
        return "tiff"
    if head.startswith(RIFF_MAGIC) and head[8:12] == WEBP_MAGIC:
        return "webp"
    if head.startswith(BMP_MAGIC):
        return "bmp"
    return None


# --------------------------------------------------------------------------- PNG

PNG_IHDR_LENGTH = 13
PNG_MAX_CHUNK_LENGTH = 2**31 - 1
PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
PNG_BIT_DEPTHS = {
    0: (1, 2, 4, 8, 16),
    2: (8, 16),
    3: (1, 2, 4, 8),
    4: (8, 16),
    6: (8, 16),
}
PNG_PALETTE = 3
_PNG_CHUNK_HEAD = struct.Struct(">I4s")
_PNG_IHDR = struct.Struct(">IIBBBBB")


def _inspect_png(view: memoryview) -> ImageInfo:
    size = len(view)
    pos = len(PNG_SIGNATURE)
    if size < pos + 8 + PNG_IHDR_LENGTH + 4:
        raise _truncated(f"PNG of {size} bytes ends inside the IHDR chunk")
    length, ctype = _PNG_CHUNK_HEAD.unpack_from(view, pos)
    if ctype != b"IHDR":
        raise _corrupt(f"PNG IHDR chunk is missing (first chunk is {ctype!r})")
    if length != PNG_IHDR_LENGTH:
        raise _corrupt(f"PNG IHDR chunk is {length} bytes long, expected 13")
    body = view[pos + 4 : pos + 8 + PNG_IHDR_LENGTH]
    (stored_crc,) = struct.unpack_from(">I", view, pos + 8 + PNG_IHDR_LENGTH)
    if zlib.crc32(body) != stored_crc:
        raise _corrupt("PNG IHDR chunk CRC does not match its contents")
    width, height, depth, colour, compression, filtering, interlace = _PNG_IHDR.unpack_from(
        view, pos + 8
    )
    if not (0 < width <= PNG_MAX_CHUNK_LENGTH and 0 < height <= PNG_MAX_CHUNK_LENGTH):
        raise _corrupt(f"PNG size {width}x{height} is invalid")
    if colour not in PNG_BIT_DEPTHS:
        raise _corrupt(f"PNG colour type {colour} is invalid")
    if depth not in PNG_BIT_DEPTHS[colour]:
        raise _corrupt(f"PNG bit depth {depth} is invalid for colour type {colour}")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise _corrupt(
            f"PNG IHDR has invalid compression/filter/interlace methods "
            f"{compression}/{filtering}/{interlace}"
        )

    pos += 12 + PNG_IHDR_LENGTH
    while True:
        if pos + 12 > size:
            raise _truncated(f"PNG ends at byte {size} before the IEND chunk")
        length, ctype = _PNG_CHUNK_HEAD.unpack_from(view, pos)
        if length > PNG_MAX_CHUNK_LENGTH or not ctype.isalpha():
            raise _corrupt(f"PNG chunk at offset {pos} is malformed ({ctype!r}, {length} bytes)")
        pos += 12 + length
        if pos > size:
            raise _truncated(
                f"PNG {ctype.decode('ascii')} chunk runs past the end of the {size}-byte file"
            )
        if ctype == b"IEND":
            break

    palette = colour == PNG_PALETTE
    return ImageInfo("png", width, height, PNG_CHANNELS[colour], 8 if palette else depth, 1)


# --------------------------------------------------------------------------- JPEG

JPEG_MARKER_PREFIX = 0xFF
JPEG_SOI_MARKER = 0xD8
JPEG_EOI_MARKER = 0xD9
JPEG_SOS_MARKER = 0xDA
JPEG_TEM_MARKER = 0x01
JPEG_RST_MARKERS = frozenset(range(0xD0, 0xD8))
JPEG_SOF_MARKERS = frozenset(
    [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF]
)
JPEG_EOI = b"\xff\xd9"
_JPEG_SOF = struct.Struct(">BHHB")  # precision, height, width, components
_JPEG_SOF_MIN_LENGTH = 2 + _JPEG_SOF.size
_TAIL_WINDOW = 4096


def _end_without_zero_padding(view: memoryview) -> int:
    """Length of ``view`` once trailing zero bytes are dropped."""
    end = len(view)
    while end > 0:
        start = max(0, end - _TAIL_WINDOW)
        kept = len(bytes(view[start:end]).rstrip(b"\x00"))
        if kept:
            return start + kept
        end = start
    return 0


def _inspect_jpeg(view: memoryview) -> ImageInfo:
    size = len(view)
    pos = 2  # after SOI
    while True:
        if pos >= size:
            raise _truncated(f"JPEG ends at byte {size} before a frame (SOF) marker")
        if view[pos] != JPEG_MARKER_PREFIX:
            raise _corrupt(f"JPEG expected a marker at offset {pos}, found byte 0x{view[pos]:02X}")
        while pos < size and view[pos] == JPEG_MARKER_PREFIX:  # fill bytes
            pos += 1
        if pos >= size:
            raise _truncated(f"JPEG ends at byte {size} inside a marker")
        marker = view[pos]
        pos += 1
        if marker in JPEG_RST_MARKERS or marker == JPEG_TEM_MARKER:
            continue  # stand-alone markers carry no length
        if marker in (0x00, JPEG_SOI_MARKER, JPEG_EOI_MARKER, JPEG_SOS_MARKER):
            raise _corrupt(f"JPEG marker 0xFF{marker:02X} at offset {pos - 2} comes before any SOF")
        if pos + 2 > size:
            raise _truncated(f"JPEG ends at byte {size} inside the 0xFF{marker:02X} segment")
        (length,) = struct.unpack_from(">H", view, pos)
        if length < 2:
            raise _corrupt(f"JPEG segment 0xFF{marker:02X} at offset {pos - 2} has length {length}")
        if marker in JPEG_SOF_MARKERS:
            break
        pos += length
        if pos > size:
            raise _truncated(
                f"JPEG segment 0xFF{marker:02X} runs past the end of the {size}-byte file"
            )

    if length < _JPEG_SOF_MIN_LENGTH:
        raise _corrupt(f"JPEG SOF segment is {length} bytes long, too short")
    if pos + _JPEG_SOF_MIN_LENGTH > size:
        raise _truncated(f"JPEG ends at byte {size} inside the SOF segment")
    precision, height, width, components = _JPEG_SOF.unpack_from(view, pos + 2)
    if precision == 0 or width == 0 or components == 0:
        raise _corrupt(
            f"JPEG SOF declares precision {precision}, width {width}, {components} components"
        )
    if length < _JPEG_SOF_MIN_LENGTH + 3 * components:
        raise _corrupt(f"JPEG SOF segment is too short for {components} components")
    sof_end = pos + length
    end = _end_without_zero_padding(view)
    if end < sof_end + len(JPEG_EOI) or view[end - 2 : end] != JPEG_EOI:
        raise _truncated(f"JPEG of {size} bytes does not end with the EOI marker FF D9")
    return ImageInfo("jpeg", width, height or None, components, precision, 1)


# --------------------------------------------------------------------------- BMP

BMP_FILE_HEADER_SIZE = 14
BMP_CORE_HEADER_SIZE = 12
BMP_INFO_HEADER_SIZES = frozenset([40, 52, 56, 64, 108, 124])
BMP_PALETTE_BPP = frozenset([1, 2, 4, 8])
BMP_BPP = BMP_PALETTE_BPP | {16, 24, 32}
BMP_RGB, BMP_RLE8, BMP_RLE4, BMP_BITFIELDS = 0, 1, 2, 3
BMP_JPEG, BMP_PNG, BMP_ALPHABITFIELDS = 4, 5, 6
BMP_UNCOMPRESSED = frozenset([BMP_RGB, BMP_BITFIELDS, BMP_ALPHABITFIELDS])
BMP_EMBEDDED = frozenset([BMP_JPEG, BMP_PNG])
BMP_COMPRESSIONS = BMP_UNCOMPRESSED | BMP_EMBEDDED | {BMP_RLE8, BMP_RLE4}
BMP_SAMPLES = {16: (3, 5), 24: (3, 8), 32: (4, 8)}  # bpp -> (channels, bit_depth)
_BMP_FILE_HEADER = struct.Struct("<2sIHHII")  # magic, size, res1, res2, pixel offset, DIB size
_BMP_CORE = struct.Struct("<HHHH")  # width, height, planes, bpp
_BMP_INFO = struct.Struct("<iiHHII")  # width, height, planes, bpp, compression, image size


def _inspect_bmp(view: memoryview) -> ImageInfo:
    size = len(view)
    if size < _BMP_FILE_HEADER.size:
        raise _truncated(f"BMP of {size} bytes ends inside the file header")
    _, _, _, _, pixel_offset, dib_size = _BMP_FILE_HEADER.unpack_from(view, 0)
    if dib_size != BMP_CORE_HEADER_SIZE and dib_size not in BMP_INFO_HEADER_SIZES:
        raise _corrupt(f"BMP DIB header size {dib_size} is not a known header size")
    if size < BMP_FILE_HEADER_SIZE + dib_size:
        raise _truncated(f"BMP of {size} bytes ends inside the {dib_size}-byte DIB header")
    if dib_size == BMP_CORE_HEADER_SIZE:
        width, height, planes, bpp = _BMP_CORE.unpack_from(view, 18)
        compression, image_size = BMP_RGB, 0
    else:
        width, height, planes, bpp, compression, image_size = _BMP_INFO.unpack_from(view, 18)
    if width <= 0 or height == 0:
        raise _corrupt(f"BMP size {width}x{height} is invalid")
    if planes != 1:
        raise _corrupt(f"BMP declares {planes} colour planes, expected 1")
    if compression not in BMP_COMPRESSIONS:
        raise _corrupt(f"BMP compression {compression} is unknown")
    if compression in BMP_EMBEDDED:
        channels, bit_depth = None, None
    elif bpp in BMP_PALETTE_BPP:
        channels, bit_depth = 3, 8
    elif bpp in BMP_SAMPLES:
        channels, bit_depth = BMP_SAMPLES[bpp]
    else:
        raise _corrupt(f"BMP bit count {bpp} is invalid")
    if pixel_offset < BMP_FILE_HEADER_SIZE + dib_size:
        raise _corrupt(f"BMP pixel data offset {pixel_offset} points into the headers")

    height = abs(height)
    if compression in BMP_UNCOMPRESSED:
        row_size = (bpp * width + 31) // 32 * 4
        pixel_bytes = row_size * height
    else:
        pixel_bytes = max(image_size, 1)
    if pixel_offset + pixel_bytes > size:
        raise _truncated(
            f"BMP pixel data ({pixel_bytes} bytes at offset {pixel_offset}) runs past "
            f"the end of the {size}-byte file"
        )
    return ImageInfo("bmp", width, height, channels, bit_depth, 1)


# --------------------------------------------------------------------------- TIFF

TIFF_CLASSIC_MAGIC = 42
TIFF_BIG_MAGIC = 43
TIFF_IMAGE_WIDTH = 256
TIFF_IMAGE_LENGTH = 257
TIFF_BITS_PER_SAMPLE = 258
TIFF_STRIP_OFFSETS = 273
TIFF_SAMPLES_PER_PIXEL = 277
TIFF_STRIP_BYTE_COUNTS = 279
TIFF_TILE_OFFSETS = 324
TIFF_TILE_BYTE_COUNTS = 325
TIFF_WANTED_TAGS = frozenset(
    [
        TIFF_IMAGE_WIDTH,
        TIFF_IMAGE_LENGTH,
        TIFF_BITS_PER_SAMPLE,
        TIFF_STRIP_OFFSETS,
        TIFF_SAMPLES_PER_PIXEL,
        TIFF_STRIP_BYTE_COUNTS,
        TIFF_TILE_OFFSETS,
        TIFF_TILE_BYTE_COUNTS,
    ]
)
# Integer field types: type code -> struct format character (size follows).
TIFF_INT_TYPES = {
    1: "B",  # BYTE
    3: "H",  # SHORT
    4: "I",  # LONG
    6: "b",  # SBYTE
    8: "h",  # SSHORT
    9: "i",  # SLONG
    13: "I",  # IFD
    16: "Q",  # LONG8 (BigTIFF)
    17: "q",  # SLONG8
    18: "Q",  # IFD8
}
# Byte size of one value of every defined field type (unknown types are skipped).
TIFF_TYPE_SIZES = {
    **{ftype: struct.calcsize(item) for ftype, item in TIFF_INT_TYPES.items()},
    2: 1,  # ASCII
    5: 8,  # RATIONAL
    7: 1,  # UNDEFINED
    10: 8,  # SRATIONAL
    11: 4,  # FLOAT
    12: 8,  # DOUBLE
}


@dataclass(frozen=True)
class _TiffLayout:
    """Byte order and field sizes of classic TIFF or BigTIFF."""

    order: str  # struct byte-order character
    offset_fmt: str  # IFD offsets, entry value counts and value offsets
    count_fmt: str  # number of entries in an IFD
    entry_size: int
    header_size: int

    @property
    def offset_size(self) -> int:
        return struct.calcsize(self.offset_fmt)

    @property
    def count_size(self) -> int:
        return struct.calcsize(self.count_fmt)


def _tiff_layout(view: memoryview) -> _TiffLayout:
    order = "<" if view[0] == ord("I") else ">"
    (magic,) = struct.unpack_from(order + "H", view, 2)
    if magic == TIFF_CLASSIC_MAGIC:
        return _TiffLayout(order, "I", "H", 12, 8)
    if len(view) < 16:
        raise _truncated(f"BigTIFF of {len(view)} bytes ends inside its 16-byte header")
    offset_size, reserved = struct.unpack_from(order + "HH", view, 4)
    if offset_size != 8 or reserved != 0:
        raise _corrupt(f"BigTIFF header declares {offset_size}-byte offsets, expected 8")
    return _TiffLayout(order, "Q", "Q", 20, 16)


def _tiff_read_ifd(
    view: memoryview, layout: _TiffLayout, offset: int, *, collect: bool
) -> tuple[int, dict[int, tuple[int, int, int]]]:
    """Check the IFD at ``offset`` fits; return (next IFD offset, wanted entries).

    Only when ``collect``: the values of every entry must fit in the data, and
    the wanted entries are returned as (type, count, position of the value field).
    """
    size = len(view)
    order = layout.order
    if offset + layout.count_size > size:
        raise _truncated(f"TIFF IFD offset {offset} is past the end of the {size}-byte file")
    (count,) = struct.unpack_from(order + layout.count_fmt, view, offset)
    table = offset + layout.count_size
    table_end = table + count * layout.entry_size
    if table_end + layout.offset_size > size:
        raise _truncated(
            f"TIFF IFD at offset {offset} with {count} entries runs past the end "
            f"of the {size}-byte file"
        )
    (next_offset,) = struct.unpack_from(order + layout.offset_fmt, view, table_end)
    entries: dict[int, tuple[int, int, int]] = {}
    if collect:
        # An entry is tag, type, value count and the value (or its offset);
        # count and value are offset-sized (4 bytes, or 8 in BigTIFF).
        entry_head = order + "HH" + layout.offset_fmt
        for pos in range(table, table_end, layout.entry_size):
            tag, ftype, n = struct.unpack_from(entry_head, view, pos)
            value_pos = pos + 4 + layout.offset_size
            nbytes = n * TIFF_TYPE_SIZES.get(ftype, 0)
            if nbytes > layout.offset_size:
                (start,) = struct.unpack_from(order + layout.offset_fmt, view, value_pos)
                if start + nbytes > size:
                    raise _truncated(
                        f"TIFF tag {tag} values ({nbytes} bytes at offset {start}) run past "
                        f"the end of the {size}-byte file"
                    )
            if tag in TIFF_WANTED_TAGS and tag not in entries:
                entries[tag] = (ftype, n, value_pos)
    return next_offset, entries


def _tiff_values(
    view: memoryview, layout: _TiffLayout, tag: int, entry: tuple[int, int, int]
) -> tuple[int, ...]:
    ftype, count, value_pos = entry
    if ftype not in TIFF_INT_TYPES:
        raise _corrupt(f"TIFF tag {tag} has non-integer field type {ftype}")
    if count == 0:
        raise _corrupt(f"TIFF tag {tag} has no values")
    item = TIFF_INT_TYPES[ftype]
    nbytes = count * struct.calcsize(item)
    if nbytes <= layout.offset_size:
        start = value_pos
    else:  # _tiff_read_ifd checked that the values fit
        (start,) = struct.unpack_from(layout.order + layout.offset_fmt, view, value_pos)
    return struct.unpack_from(f"{layout.order}{count}{item}", view, start)


def _tiff_check_data(
    view: memoryview,
    layout: _TiffLayout,
    entries: dict[int, tuple[int, int, int]],
) -> None:
    """The strips (or tiles) of one IFD must lie inside the data."""
    for offsets_tag, counts_tag, kind in (
        (TIFF_STRIP_OFFSETS, TIFF_STRIP_BYTE_COUNTS, "strip"),
        (TIFF_TILE_OFFSETS, TIFF_TILE_BYTE_COUNTS, "tile"),
    ):
        if offsets_tag not in entries:
            continue
        offsets = _tiff_values(view, layout, offsets_tag, entries[offsets_tag])
        if counts_tag in entries:
            counts = _tiff_values(view, layout, counts_tag, entries[counts_tag])
            if len(counts) != len(offsets):
                raise _corrupt(
                    f"TIFF has {len(offsets)} {kind} offsets but {len(counts)} byte counts"
                )
        else:
            counts = (0,) * len(offsets)
        end = max((offset + count for offset, count in zip(offsets, counts)), default=0)
        if end > len(view):
            raise _truncated(
                f"TIFF {kind} data ends at byte {end}, past the end of the {len(view)}-byte file"
            )
        return
    raise _corrupt("TIFF IFD has neither StripOffsets nor TileOffsets")


def _inspect_tiff(view: memoryview) -> ImageInfo:
    size = len(view)
    if size < 8:
        raise _truncated(f"TIFF of {size} bytes ends inside its header")
    layout = _tiff_layout(view)
    first_ifd_field = layout.header_size - layout.offset_size
    (offset,) = struct.unpack_from(layout.order + layout.offset_fmt, view, first_ifd_field)
    if offset < layout.header_size:
        raise _corrupt(f"TIFF first IFD offset {offset} points into the header")

    seen: set[int] = set()
    first: dict[int, tuple[int, int, int]] = {}
    last_offset = offset
    while offset:
        if offset in seen:
            raise _corrupt(f"TIFF IFD chain loops back to offset {offset}")
        if len(seen) >= MAX_TIFF_PAGES:
            raise _corrupt(f"TIFF has more than {MAX_TIFF_PAGES} IFDs")
        is_first = not seen
        seen.add(offset)
        last_offset = offset
        offset, entries = _tiff_read_ifd(view, layout, offset, collect=is_first)
        if is_first:
            first = entries

    for tag, name in ((TIFF_IMAGE_WIDTH, "ImageWidth"), (TIFF_IMAGE_LENGTH, "ImageLength")):
        if tag not in first:
            raise _corrupt(f"TIFF first IFD has no {name} tag")
    width = _tiff_values(view, layout, TIFF_IMAGE_WIDTH, first[TIFF_IMAGE_WIDTH])[0]
    height = _tiff_values(view, layout, TIFF_IMAGE_LENGTH, first[TIFF_IMAGE_LENGTH])[0]
    if width <= 0 or height <= 0:
        raise _corrupt(f"TIFF size {width}x{height} is invalid")
    bits, samples = 1, 1  # TIFF defaults
    if TIFF_BITS_PER_SAMPLE in first:
        bits = _tiff_values(view, layout, TIFF_BITS_PER_SAMPLE, first[TIFF_BITS_PER_SAMPLE])[0]
    if TIFF_SAMPLES_PER_PIXEL in first:
        entry = first[TIFF_SAMPLES_PER_PIXEL]
        samples = _tiff_values(view, layout, TIFF_SAMPLES_PER_PIXEL, entry)[0]
    if bits <= 0 or samples <= 0:
        raise _corrupt(f"TIFF declares {samples} samples of {bits} bits")
    _tiff_check_data(view, layout, first)
    if len(seen) > 1:  # writers usually store pages in order: the last one ends the file
        _, last = _tiff_read_ifd(view, layout, last_offset, collect=True)
        _tiff_check_data(view, layout, last)
    return ImageInfo("tiff", width, height, samples, bits, len(seen))


# --------------------------------------------------------------------------- GIF

GIF_HEADER = struct.Struct("<6sHHBBB")  # magic, width, height, flags, background, aspect
GIF_IMAGE_SEPARATOR = 0x2C
GIF_EXTENSION = 0x21
GIF_TRAILER = 0x3B
GIF_DESCRIPTOR_SIZE = 9  # after the separator: left, top, width, height, flags
GIF_COLOR_TABLE_FLAG = 0x80
GIF_COLOR_TABLE_SIZE_MASK = 0x07


def _gif_color_table_size(flags: int) -> int:
    if not flags & GIF_COLOR_TABLE_FLAG:
        return 0
    return 3 << ((flags & GIF_COLOR_TABLE_SIZE_MASK) + 1)


def _gif_skip_sub_blocks(view: memoryview, pos: int) -> int:
    size = len(view)
    while True:
        if pos >= size:
            raise _truncated(f"GIF ends at byte {size} inside a data sub-block chain")
        block = view[pos]
        pos += 1 + block
        if block == 0:
            return pos


def _inspect_gif(view: memoryview) -> ImageInfo:
    size = len(view)
    if size < GIF_HEADER.size:
        raise _truncated(f"GIF of {size} bytes ends inside its header")
    _, width, height, flags, _, _ = GIF_HEADER.unpack_from(view, 0)
    pos = GIF_HEADER.size + _gif_color_table_size(flags)
    images = 0
    while True:
        if pos >= size:
            raise _truncated(f"GIF ends at byte {size} before the trailer 0x3B")
        block = view[pos]
        if block == GIF_TRAILER:
            break
        if block == GIF_IMAGE_SEPARATOR:
            if pos + 1 + GIF_DESCRIPTOR_SIZE > size:
                raise _truncated(f"GIF ends at byte {size} inside an image descriptor")
            image_flags = view[pos + GIF_DESCRIPTOR_SIZE]
            pos += 1 + GIF_DESCRIPTOR_SIZE + _gif_color_table_size(image_flags)
            pos += 1  # LZW minimum code size
            pos = _gif_skip_sub_blocks(view, pos)
            images += 1
        elif block == GIF_EXTENSION:
            pos = _gif_skip_sub_blocks(view, pos + 2)
        else:
            raise _corrupt(f"GIF has an unknown block 0x{block:02X} at offset {pos}")
    if images == 0:
        raise _corrupt("GIF contains no image")
    return ImageInfo("gif", width or None, height or None, 3, 8, images)


# --------------------------------------------------------------------------- WebP

RIFF_HEADER_SIZE = 8  # "RIFF" + size; the size counts everything after it
WEBP_FIRST_CHUNK = 12
WEBP_CHUNK_HEADER_SIZE = 8
WEBP_VP8_START_CODE = b"\x9d\x01\x2a"
WEBP_VP8_DIMENSION_MASK = 0x3FFF
WEBP_VP8L_SIGNATURE = 0x2F
WEBP_VP8X_ALPHA_FLAG = 0x10
WEBP_MIN_PAYLOAD = {b"VP8 ": 10, b"VP8L": 5, b"VP8X": 10}


def _inspect_webp(view: memoryview) -> ImageInfo:
    size = len(view)
    (riff_size,) = struct.unpack_from("<I", view, 4)
    if riff_size < len(WEBP_MAGIC) + WEBP_CHUNK_HEADER_SIZE:
        raise _corrupt(f"WebP RIFF size {riff_size} is too small to hold a chunk")
    if size < RIFF_HEADER_SIZE + riff_size:
        raise _truncated(
            f"WebP RIFF size says {RIFF_HEADER_SIZE + riff_size} bytes, the data has {size}"
        )
    fourcc = bytes(view[WEBP_FIRST_CHUNK : WEBP_FIRST_CHUNK + 4])
    (chunk_size,) = struct.unpack_from("<I", view, WEBP_FIRST_CHUNK + 4)
    if fourcc not in WEBP_MIN_PAYLOAD:
        raise _corrupt(f"WebP first chunk {fourcc!r} is not VP8, VP8L or VP8X")
    if chunk_size < WEBP_MIN_PAYLOAD[fourcc]:
        raise _corrupt(f"WebP {fourcc!r} chunk of {chunk_size} bytes is too short")
    p = WEBP_FIRST_CHUNK + WEBP_CHUNK_HEADER_SIZE
    if p + chunk_size > size:
        raise _truncated(f"WebP {fourcc!r} chunk runs past the end of the {size}-byte file")

    if fourcc == b"VP8 ":
        if view[p + 3 : p + 6] != WEBP_VP8_START_CODE:
            raise _corrupt("WebP VP8 frame has no start code")
        width, height = struct.unpack_from("<HH", view, p + 6)
        width &= WEBP_VP8_DIMENSION_MASK
        height &= WEBP_VP8_DIMENSION_MASK
        channels = 3
    elif fourcc == b"VP8L":
        if view[p] != WEBP_VP8L_SIGNATURE:
            raise _corrupt("WebP VP8L bitstream has a bad signature byte")
        (bits,) = struct.unpack_from("<I", view, p + 1)
        if bits >> 29:
            raise _corrupt(f"WebP VP8L version {bits >> 29} is unknown")
        width = (bits & 0x3FFF) + 1
        height = ((bits >> 14) & 0x3FFF) + 1
        channels = 4
    else:  # VP8X: flags, 3 reserved bytes, 24-bit width-1 and height-1
        flags = view[p]
        width = int.from_bytes(view[p + 4 : p + 7], "little") + 1
        height = int.from_bytes(view[p + 7 : p + 10], "little") + 1
        channels = 4 if flags & WEBP_VP8X_ALPHA_FLAG else 3
    if width == 0 or height == 0:
        raise _corrupt(f"WebP size {width}x{height} is invalid")
    return ImageInfo("webp", width, height, channels, 8, 1)


# --------------------------------------------------------------------------- entry point

_INSPECTORS: dict[str, Callable[[memoryview], ImageInfo]] = {
    "png": _inspect_png,
    "jpeg": _inspect_jpeg,
    "bmp": _inspect_bmp,
    "tiff": _inspect_tiff,
    "gif": _inspect_gif,
    "webp": _inspect_webp,
}


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def inspect_image(data: bytes | bytearray | memoryview) -> ImageInfo:
    """Identify ``data`` by its magic bytes and read its header facts.

    Raises :class:`InvalidImage` (and nothing else) for data that is empty, not
    a known image format, truncated or has a corrupt header.
    """
    view = _byte_view(data)
    size = len(view)
    if size == 0:
        raise InvalidImage(REASON_EMPTY, "the data is empty (zero bytes)")
    head = bytes(view[:SNIFF_BYTES])
    fmt = sniff_format(head)
    if fmt is None:
        if size >= _MIN_PREFIX and any(
            size < len(sig) and sig.startswith(head) for sig in _PREFIX_SIGNATURES
        ):
            raise _truncated(f"the {size}-byte data is only the start of an image signature")
        raise InvalidImage(REASON_NOT_IMAGE, f"unknown file signature {head[:8].hex(' ')}")
    try:
        return _INSPECTORS[fmt](view)
    except InvalidImage:
        raise
    except (struct.error, IndexError) as exc:
        name = fmt.upper()
        raise _truncated(f"{name} structure runs past the end of the {size}-byte data") from exc
    except Exception as exc:  # safety net: the contract is InvalidImage only
        why = f"{type(exc).__name__}: {exc}"
        raise _corrupt(f"{fmt.upper()} header could not be parsed ({why})") from exc
