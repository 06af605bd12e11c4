"""Read-path benchmark: images per second delivered as float tensors.

    .venv/bin/python benchmarks/read.py [--images 2000] [--workers 2] [--record]

Generates its own data set (textured 256x256 PNG and JPEG images in an ImageFolder tree, in a
temporary folder), ingests it with Spark, stops Spark, then times one epoch of:

(a) the original files on local disk through a plain ``torch.utils.data.DataLoader``
    (``num_workers`` worker processes, each reading a file and calling cnnspark.decode);
(b) ``cnnspark.data.make_torch_dataloader`` with a cold (empty) chunk cache;
(c) the same with the cache warm from (b).

All three use the same decode function, image size, batch size, worker count and shuffling, and
deliver every image once (one epoch, checked). Each is timed from creating its loader (reader
setup and worker start count) to the last batch. The OS page
cache is warmed for the source files and the lake before timing, so (a) is not disk bound.
With ``--record`` the figures replace the "## Read path" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def make_images(root: Path, count: int, size: int, classes: int) -> int:
    from imagegen import textured, write_image

    rng = np.random.default_rng(0)
    total = 0
    for i in range(count):
        suffix = ".png" if i % 2 == 0 else ".jpg"
        path = write_image(root / f"class{i % classes:02d}" / f"img{i:05d}{suffix}", textured(rng, size, size, 3))
        total += path.stat().st_size
    return total


class FileDataset:
    """(a): the plain baseline over original files."""

    def __init__(self, paths: list[Path], labels: list[int], options) -> None:
        self.paths, self.labels, self.options = paths, labels, options

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        from cnnspark.decode import decode_image

        with open(self.paths[i], "rb") as f:
            data = f.read()
        return {"image": torch.from_numpy(decode_image(data, self.options)), "label": self.labels[i]}


def time_loader(make_loader, expected: int) -> float:
    """Images/s of one epoch, timed from creating the loader (its setup and worker start count)."""
    start = time.perf_counter()
    seen = 0
    with contextlib.ExitStack() as stack:
        loader = make_loader()
        if hasattr(loader, "__exit__"):
            loader = stack.enter_context(loader)
        for batch in loader:
            seen += int(batch["image"].shape[0])
    elapsed = time.perf_counter() - start
    if seen != expected:
        raise SystemExit(f"loader delivered {seen} images, expected {expected}")
    return expected / elapsed


def warm_page_cache(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 22):
                    pass


def record(text: str) -> None:
    path = REPO / "BENCHMARKS.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    section = "## Read path\n\n" + text.strip() + "\n"
    pattern = re.compile(r"^## Read path\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        current = pattern.sub(lambda _m: section + "\n", current).rstrip() + "\n"
    else:
        current = current.rstrip() + "\n\n" + section
    path.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256, help="source image side (default 256)")
    parser.add_argument("--image-size", type=int, default=224, help="tensor side (default 224)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pool", default="thread", choices=["thread", "process"], help="Petastorm pool for (b)/(c)")
    parser.add_argument("--workdir", default=None, help="keep data here instead of a temporary folder")
    parser.add_argument("--record", action="store_true", help="write the figures into BENCHMARKS.md")
    args = parser.parse_args()

    import torch

    from cnnspark.data import label_mapping, make_torch_dataloader
    from cnnspark.decode import DecodeOptions
    from cnnspark.ingest import IngestOptions, ingest
    from cnnspark.session import get_spark

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cnnspark-bench-read-"))
    src, lake, cache = work / "src", work / "lake", work / "cache"
    try:
        if not src.exists():
            t = time.perf_counter()
            nbytes = make_images(src, args.images, args.size, classes=10)
            print(f"generated {args.images} images ({nbytes / 2**20:.1f} MiB) in {time.perf_counter() - t:.1f} s", flush=True)
        nbytes = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        if not lake.exists():
            spark = get_spark("bench-read")
            t = time.perf_counter()
            ingest(spark, IngestOptions(source=str(src), lake=str(lake), dataset="bench"), progress=None)
            print(f"ingested in {time.perf_counter() - t:.1f} s", flush=True)
            spark.stop()
        options = DecodeOptions(image_size=args.image_size, channels=3)
        mapping = label_mapping(str(lake), "bench")
        paths = sorted(p for p in src.rglob("*") if p.is_file())
        labels = [mapping[p.parent.name] for p in paths]
        warm_page_cache(src)
        warm_page_cache(lake)
        import pandas  # noqa: F401 - imports are not what is being timed
        import petastorm.pytorch  # noqa: F401

        rate_a = time_loader(
            lambda: torch.utils.data.DataLoader(
                FileDataset(paths, labels, options), batch_size=args.batch_size, shuffle=True, num_workers=args.workers
            ),
            len(paths),
        )
        print(f"(a) files + torch DataLoader      {rate_a:8.1f} images/s", flush=True)

        shutil.rmtree(cache, ignore_errors=True)
        rates = []
        for _ in ("cold", "warm"):
            rates.append(
                time_loader(
                    lambda: make_torch_dataloader(
                        str(lake), "bench", split="train", image_size=args.image_size, channels=3,
                        batch_size=args.batch_size, num_epochs=1, workers=args.workers, pool=args.pool,
                        cache_dir=cache, cache_size="20GiB",
                    ),
                    len(paths),
                )
            )
        rate_b, rate_c = rates
        print(f"(b) cnnspark reader, cold cache   {rate_b:8.1f} images/s  ({rate_b / rate_a:.2f}x of a)")
        print(f"(c) cnnspark reader, warm cache   {rate_c:8.1f} images/s  ({rate_c / rate_a:.2f}x of a)")
        if args.record:
            cpu = platform.processor() or platform.machine()
            record(
                f"""Command: `.venv/bin/python benchmarks/read.py --images {args.images} --workers {args.workers} --record`
(`--pool {args.pool}`, batch size {args.batch_size}).

Data: {args.images} textured {args.size}x{args.size} RGB images, half PNG and half JPEG (quality 90),
{nbytes / 2**20:.1f} MiB, 10 classes, generated by the script and ingested with default chunking.
Tensors: float32 3x{args.image_size}x{args.image_size}, bilinear resize, scaled to 0..1, through
`cnnspark.decode.decode_image` in all three cases; one epoch of every image, shuffled, batch size
{args.batch_size}, {args.workers} workers; each case timed from creating its loader to its last batch. Machine: {os.cpu_count()} CPU cores ({cpu}),
Python {platform.python_version()}, torch {torch.__version__}; OS page cache warm for the files and the lake.

| case | images/s | vs (a) | target |
|---|---:|---:|---|
| (a) original files, plain torch DataLoader, {args.workers} workers | {rate_a:.1f} | 1.00x | |
| (b) cnnspark reader, cold chunk cache | {rate_b:.1f} | {rate_b / rate_a:.2f}x | >= 0.7x: {"met" if rate_b >= 0.7 * rate_a else "missed"} |
| (c) cnnspark reader, warm chunk cache | {rate_c:.1f} | {rate_c / rate_a:.2f}x | >= 1.0x: {"met" if rate_c >= rate_a else "missed"} |
"""
            )
            print("recorded in BENCHMARKS.md")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
