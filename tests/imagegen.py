"""Real image files for tests: written with Pillow and tifffile, never faked bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def textured(rng: np.random.Generator, h: int, w: int, channels: int = 3) -> np.ndarray:
    """A smooth random image (compresses like a photo, unlike noise) as uint8."""
    small = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), channels), dtype=np.uint8)
    img = Image.fromarray(small.squeeze(-1) if channels == 1 else small).resize((w, h), Image.BILINEAR)
    arr = np.asarray(img)
    noise = rng.integers(0, 8, size=arr.shape, dtype=np.uint8)
    return (arr // 2 + noise).astype(np.uint8)


def write_image(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` in the format of ``path``'s suffix (.png .jpg .bmp .tif/.tiff)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    elif suffix in (".jpg", ".jpeg"):
        Image.fromarray(array).save(path, quality=90)
    else:
        Image.fromarray(array).save(path)
    return path


def image_folder(root: Path, *, classes=("cat", "dog"), per_class: int = 3, seed: int = 0, size=(96, 128)) -> list[Path]:
    """An ImageFolder tree (root/<class>/<file>) of PNG, TIFF and JPEG files."""
    rng = np.random.default_rng(seed)
    paths = []
    suffixes = (".png", ".tif", ".jpg", ".bmp")
    for c in classes:
        for i in range(per_class):
            arr = textured(rng, *size, channels=3)
            paths.append(write_image(root / c / f"{c}_{i}{suffixes[i % len(suffixes)]}", arr))
    return paths
