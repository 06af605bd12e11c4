"""Ingest throughput against a plain Spark copy of the same files, measured in one run.

    python benchmarks/ingest.py [--size 320MB] [--repeat 2] [--workdir DIR]

For each data set (a) no duplicates, (b) half of the content duplicated, it times
  baseline: spark.read.format("binaryFile").load(SOURCE).write.parquet(OUT)   (a plain copy)
  cnnspark: cnnspark.ingest.ingest(...) into a fresh lake
on the same embedded Spark session, alternating the order, and prints MB/s of each and the
ratio cnnspark/baseline (median over --repeat runs). Targets: >= 0.8x without duplicates,
>= 1.0x with half the content duplicated.

The data: uncompressed 8-bit RGB TIFF files (~2.3 MB each, as inspection cameras write them)
of smooth random texture. The duplicated set holds the same number of bytes, half of them
copies of the other half's files under other names (a re-exported dataset version).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnspark.ingest import IngestOptions, ingest  # noqa: E402
from cnnspark.session import get_spark  # noqa: E402
from cnnspark.sizes import format_size, parse_size  # noqa: E402

IMAGE_SHAPE = (768, 1024, 3)


def texture(rng: np.random.Generator) -> np.ndarray:
    h, w, c = IMAGE_SHAPE
    small = rng.integers(0, 256, size=(h // 32, w // 32, c), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    return (arr // 2 + rng.integers(0, 16, size=arr.shape, dtype=np.uint8)).astype(np.uint8)


def make_dataset(root: Path, total_bytes: int, duplicated_fraction: float, seed: int) -> tuple[int, int]:
    rng = np.random.default_rng(seed)
    per_file = int(np.prod(IMAGE_SHAPE))
    n = max(2, total_bytes // per_file)
    n_unique = n - int(n * duplicated_fraction)
    written = []
    for i in range(n_unique):
        path = root / f"class{i % 4}" / f"img{i:05d}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, texture(rng))
        written.append(path)
    for j in range(n - n_unique):
        src = written[j % n_unique]
        dst = root / "copies" / f"copy{j:05d}.tif"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    files = [p for p in root.rglob("*.tif")]
    return len(files), sum(p.stat().st_size for p in files)


def time_copy(spark, source: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(source)).write.parquet(str(out))
    return time.perf_counter() - t


def time_ingest(spark, source: Path, lake: Path) -> tuple[float, dict]:
    shutil.rmtree(lake, ignore_errors=True)
    t = time.perf_counter()
    summary = ingest(spark, IngestOptions(source=str(source), lake=str(lake), dataset="bench"), progress=None)
    return time.perf_counter() - t, summary.to_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="320MB", help="bytes of images per data set (default 320MB)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each (default 2; median reported)")
    parser.add_argument("--workdir", default=None, help="where to generate data (default: a temp dir, removed)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    total = parse_size(args.size, what="--size")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cnnspark-bench-"))
    spark = get_spark("cnnspark-bench-ingest")
    spark.sparkContext.setLogLevel("ERROR")
    results = []
    try:
        for name, dup in (("no duplicates", 0.0), ("half duplicated", 0.5)):
            source = work / name.replace(" ", "_")
            n_files, n_bytes = make_dataset(source, total, dup, seed=1)
            time_copy(spark, source, work / "warmup")  # warm the page cache and the JVM
            time_ingest(spark, source, work / "warmup-lake")  # and the Python workers
            copies, ingests, summary = [], [], {}
            for r in range(args.repeat):
                order = [0, 1] if r % 2 == 0 else [1, 0]
                for which in order:
                    if which == 0:
                        copies.append(time_copy(spark, source, work / "copy"))
                    else:
                        seconds, summary = time_ingest(spark, source, work / "lake")
                        ingests.append(seconds)
            copy_s, ingest_s = statistics.median(copies), statistics.median(ingests)
            mb = n_bytes / 1e6
            row = {
                "data": name,
                "files": n_files,
                "bytes": n_bytes,
                "baseline_copy_s": round(copy_s, 2),
                "baseline_MBps": round(mb / copy_s, 1),
                "cnnspark_ingest_s": round(ingest_s, 2),
                "cnnspark_MBps": round(mb / ingest_s, 1),
                "ratio": round(copy_s / ingest_s, 2),
                "stored_chunk_bytes": summary["new_physical_bytes"],
                "dedup_ratio": summary["lake_dedup_ratio"],
                "runs": {"copy_s": [round(x, 2) for x in copies], "ingest_s": [round(x, 2) for x in ingests]},
            }
            results.append(row)
            shutil.rmtree(source, ignore_errors=True)
    finally:
        spark.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'data':18} {'files':>6} {'size':>10} {'copy MB/s':>10} {'ingest MB/s':>12} {'ratio':>6} {'dedup':>6}")
        for r in results:
            print(
                f"{r['data']:18} {r['files']:>6} {format_size(r['bytes']):>10} {r['baseline_MBps']:>10} "
                f"{r['cnnspark_MBps']:>12} {r['ratio']:>5}x {r['dedup_ratio']:>5}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
