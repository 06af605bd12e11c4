"""Image bytes -> fixed-size float32 array (C, H, W): the one decode used by the Petastorm reader,
the Spark path and the benchmark's plain-files baseline, so they agree bit for bit.

Steps:

1. Decode. Pillow for PNG, JPEG, BMP, GIF, WebP and 8-bit TIFF; tifffile for TIFF with more than
   8 bits per sample, several pages, or anything Pillow cannot open. Multi-page TIFF: the first
   page. Palette images expand to RGB. Samples keep their stored range: 8-bit (0..255) or 16-bit
   (0..65535); float TIFF is taken as already in 0..1.
2. Channels to ``channels`` (1, 3 or 4): gray -> RGB repeats the plane; RGB -> gray is ITU-R 601
   luma (0.299 R + 0.587 G + 0.114 B); alpha is dropped when not asked for and set to fully
   opaque when asked for but absent; gray+alpha counts as gray with alpha.
3. Resize to ``image_size`` (H, W) with bilinear filtering: 8-bit L/RGB/RGBA in Pillow's native
   modes, anything else per channel in Pillow's float mode ``F``.
4. Scale to 0..1 by the stored range (255 or 65535), then ``(x - mean) / std`` per channel when
   ``mean``/``std`` are given.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cnnspark.errors import ConfigError
from cnnspark.formats import sniff_format

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_PIL_8BIT = {"L": 1, "RGB": 3, "RGBA": 4}


class DecodeError(ValueError):
    """The bytes could not be decoded as an image."""


@dataclass(frozen=True)
class DecodeOptions:
    """How images become tensors: size (H, W), channels, optional per-channel mean/std."""

    image_size: tuple[int, int] = (224, 224)
    channels: int = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, int):
            object.__setattr__(self, "image_size", (size, size))
        elif len(size) != 2:
            raise ConfigError(f"image_size must be an int or (height, width), got {size!r}")
        else:
            object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
        if min(self.image_size) < 1:
            raise ConfigError(f"image_size must be positive, got {self.image_size}")
        if self.channels not in (1, 3, 4):
            raise ConfigError(f"channels must be 1, 3 or 4, got {self.channels}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in (value if isinstance(value, Sequence) else [value]))
                if len(value) == 1:
                    value = value * self.channels
                if len(value) != self.channels:
                    raise ConfigError(f"{name} needs 1 or {self.channels} values, got {len(value)}")
                object.__setattr__(self, name, value)
        if self.std is not None and any(s == 0 for s in self.std):
            raise ConfigError("std values must not be zero")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.image_size)


def _decode_native(data: bytes) -> tuple[Image.Image | np.ndarray, float]:
    """A Pillow image (8-bit modes) or an (H, W, C) array, and the value that maps to 1.0."""
    fmt = sniff_format(data[:16])
    if fmt == "tiff":
        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages[0]
                simple = len(tif.pages) == 1 and page.dtype == np.uint8 and page.photometric in (0, 1, 2) and page.samplesperpixel in (1, 3, 4)
                if not simple:
                    arr = page.asarray()
                    return _array_with_range(arr, page)
        except Exception as e:  # noqa: BLE001 - fall back to Pillow for what tifffile cannot read
            try:
                return _pil(data), 255.0
            except DecodeError:
                raise DecodeError(f"cannot decode TIFF: {e}") from e
    return _pil(data), 255.0


def _array_with_range(arr: np.ndarray, page) -> tuple[np.ndarray, float]:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) -> (H, W, C)
    if arr.ndim != 3:
        raise DecodeError(f"unsupported TIFF page shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32), 1.0
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8), 1.0
    bits = int(getattr(page, "bitspersample", arr.dtype.itemsize * 8) or arr.dtype.itemsize * 8)
    return arr, float(2 ** min(bits, arr.dtype.itemsize * 8) - 1)


def _pil(data: bytes) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # noqa: BLE001 - Pillow raises many types
        raise DecodeError(f"cannot decode image: {e}") from e
    return img


def _to_hwc(img: Image.Image | np.ndarray, scale: float) -> tuple[Image.Image | np.ndarray, float, bool]:
    """Normalise Pillow modes: -> (L/RGB/RGBA image or (H, W, C) array, scale, has_alpha)."""
    if isinstance(img, np.ndarray):
        c = img.shape[-1]
        return img, scale, c in (2, 4)
    mode = img.mode
    if mode in ("L", "RGB", "RGBA"):
        return img, 255.0, mode == "RGBA"
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if ("transparency" in img.info or mode == "PA") else "RGB")
        return img, 255.0, img.mode == "RGBA"
    if mode == "LA":
        return np.asarray(img), 255.0, True
    if mode == "1":
        return img.convert("L"), 255.0, False
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB"), 255.0, False
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)[:, :, None], 65535.0, False
    if mode == "I":
        arr = np.asarray(img)
        return arr[:, :, None], 65535.0 if arr.max(initial=0) > 255 or img.format == "PNG" else 255.0, False
    if mode == "F":
        return np.asarray(img)[:, :, None], 1.0, False
    return img.convert("RGB"), 255.0, False


def _channels_array(arr: np.ndarray, has_alpha: bool, channels: int, opaque: float) -> np.ndarray:
    """(H, W, c) float32 -> (H, W, channels) by the module's channel rules."""
    c = arr.shape[-1]
    color = arr[..., : c - 1] if has_alpha else arr
    alpha = arr[..., c - 1 :] if has_alpha else None
    if channels == 1:
        if color.shape[-1] >= 3:
            return (color[..., :3] @ LUMA)[..., None].astype(np.float32)
        return color[..., :1]
    rgb = color[..., :3] if color.shape[-1] >= 3 else np.repeat(color[..., :1], 3, axis=-1)
    if channels == 3:
        return rgb
    if alpha is None:
        alpha = np.full(rgb.shape[:2] + (1,), opaque, np.float32)
    return np.concatenate([rgb, alpha], axis=-1)


def decode_image(
    data: bytes | memoryview, options: DecodeOptions | None = None, *, out: np.ndarray | None = None, **kwargs
) -> np.ndarray:
    """Decode image bytes into a float32 (C, H, W) array per ``options`` (or DecodeOptions(**kwargs)).

    ``out``: a C-contiguous float32 array of shape ``options.shape`` to write into (e.g. one row of
    a preallocated batch); it is returned. The values are the same with or without it.
    """
    opts = options if options is not None else DecodeOptions(**kwargs)
    h, w = opts.image_size
    if out is not None and (out.shape != opts.shape or out.dtype != np.float32):
        raise ValueError(f"out must be a float32 array of shape {opts.shape}, got {out.dtype} {out.shape}")
    if out is None:
        out = np.empty(opts.shape, np.float32)
    data = bytes(data)
    native, scale = _decode_native(data)
    img, scale, has_alpha = _to_hwc(native, scale)
    if isinstance(img, Image.Image):
        # 8-bit fast path: channel conversion and resize in Pillow's native modes.
        mode = img.mode
        want = {1: "L", 3: "RGB", 4: "RGBA"}[opts.channels]
        if mode != want:
            if want == "L" and mode == "RGBA":
                img = img.convert("RGB")
            img = img.convert(want)
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        pixels = np.asarray(img)  # uint8 (H, W[, C]); converted, scaled and transposed in one pass
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        np.multiply(np.transpose(pixels, (2, 0, 1)), np.float32(1.0 / 255.0), out=out, dtype=np.float32)
    else:
        arr = img.astype(np.float32)
        arr = _channels_array(arr, has_alpha, opts.channels, opaque=scale)
        if arr.shape[:2] != (h, w):
            planes = [np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., k]), mode="F").resize((w, h), Image.BILINEAR)) for k in range(arr.shape[-1])]
            arr = np.stack(planes, axis=-1)
        np.multiply(np.transpose(arr, (2, 0, 1)), np.float32(1.0 / scale), out=out, dtype=np.float32)
    if opts.mean is not None:
        out -= np.asarray(opts.mean, np.float32)[:, None, None]
    if opts.std is not None:
        out /= np.asarray(opts.std, np.float32)[:, None, None]
    return out
