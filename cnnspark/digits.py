"""The scikit-learn digits data set (1,797 real 8x8 handwritten digits, shipped inside the
scikit-learn package, no download) written out as PNG files in ImageFolder layout:

    OUT/train/<digit>/digit-<index>.png
    OUT/val/<digit>/digit-<index>.png

The split is stratified by digit with a fixed seed, so the same call always writes the same
files (byte for byte: Pillow's PNG encoder is deterministic). Pixels are the data set's 0..16
ink levels scaled to 0..255, grayscale, at the native 8x8 unless ``scale`` enlarges them (nearest
neighbour, so no information is invented).

Used by the training quality check: ingest both folders (``--split train`` and ``--split val``)
and train on them; see ``python -m cnnspark.digits --help``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnspark.errors import ConfigError

DEFAULT_VAL_FRACTION = 0.2
DEFAULT_SEED = 0


@dataclass(frozen=True)
class DigitsSummary:
    """What :func:`write_digits` wrote."""

    root: Path
    train: int
    val: int
    image_size: int

    def render(self) -> str:
        return (
            f"wrote {self.train} train and {self.val} val PNG files ({self.image_size}x{self.image_size} gray) "
            f"under {self.root}/train and {self.root}/val"
        )


def stratified_split(labels: np.ndarray, *, val_fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of the validation rows: ``val_fraction`` of each label, chosen by ``seed``."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"the validation fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rng.shuffle(rows)
        n_val = max(1, int(round(len(rows) * val_fraction)))
        is_val[rows[:n_val]] = True
    return is_val


def write_digits(
    out: str | Path,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = DEFAULT_SEED,
    scale: int = 1,
    limit_per_class: int | None = None,
) -> DigitsSummary:
    """Write the digits as PNG files under ``out``/train and ``out``/val (ImageFolder layout).

    ``scale`` enlarges each image by an integer factor (8x8 -> 8*scale square);
    ``limit_per_class`` keeps only the first N images of each digit (small test sets).
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    if scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale}")
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} exists and is not empty; choose a new folder for the digits PNG files")
    digits = load_digits()
    images = np.asarray(digits.images)  # (n, 8, 8) float 0..16
    labels = np.asarray(digits.target)
    keep = np.ones(len(labels), dtype=bool)
    if limit_per_class is not None:
        keep[:] = False
        for label in np.unique(labels):
            keep[np.flatnonzero(labels == label)[:limit_per_class]] = True
    is_val = stratified_split(labels[keep], val_fraction=val_fraction, seed=seed)
    indexes = np.flatnonzero(keep)
    counts = {"train": 0, "val": 0}
    for index, val in zip(indexes, is_val, strict=True):
        split = "val" if val else "train"
        pixels = np.clip(np.rint(images[index] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        if scale > 1:
            pixels = np.kron(pixels, np.ones((scale, scale), dtype=np.uint8))
        folder = root / split / str(int(labels[index]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"digit-{int(index):04d}.png")
        counts[split] += 1
    return DigitsSummary(root=root, train=counts["train"], val=counts["val"], image_size=8 * scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cnnspark.digits",
        description="Write scikit-learn's digits as PNG files in ImageFolder layout (OUT/train, OUT/val).",
    )
    parser.add_argument("out", help="an empty or new folder")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, help="held-out share of each digit (default %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split seed (default %(default)s)")
    parser.add_argument("--scale", type=int, default=1, help="integer upscaling factor, 8x8 -> 8*scale (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        print(write_digits(args.out, val_fraction=args.val_fraction, seed=args.seed, scale=args.scale).render())
    except ConfigError as e:
        print(f"cnnspark.digits: error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
