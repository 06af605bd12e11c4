"""``cnnspark ingest``: flags in, :func:`cnnspark.ingest.ingest` called, summary out."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from cnnspark.chunking import ChunkingParams
    from cnnspark.ingest import DEFAULT_FILES_PER_BATCH, DEFAULT_MAX_FILE_SIZE

    defaults = ChunkingParams()
    p = sub.add_parser(
        "ingest",
        help="chunk and hash a folder of images into a lake",
        description="Chunk and hash the images under SOURCE (a folder, searched recursively, or a glob; "
        "local or any URI Spark reads) into the Delta tables under LAKE.",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--lake", required=True, help="lake folder or object-store URI")
    p.add_argument("--dataset", required=True, help="dataset name, e.g. scans-v2")
    p.add_argument("--split", default="train", help="split name recorded with every file (default: train)")
    p.add_argument(
        "--labels", default="dirname",
        help="dirname (ImageFolder: SOURCE/<label>/<file>, the default), none, or csv:PATH (a CSV with header path,label)",
    )
    p.add_argument("--min-chunk", default=str(defaults.min_size), help="FastCDC minimum chunk size (default 16KiB)")
    p.add_argument("--avg-chunk", default=str(defaults.avg_size), help="FastCDC average chunk size (default 64KiB)")
    p.add_argument("--max-chunk", default=str(defaults.max_size), help="FastCDC maximum chunk size (default 256KiB)")
    p.add_argument(
        "--max-file-size", default=str(DEFAULT_MAX_FILE_SIZE),
        help="files larger than this go to quarantine as too_large (default 256MiB, at most 2GiB-1; see README, Limits)",
    )
    p.add_argument(
        "--files-per-batch", type=int, default=DEFAULT_FILES_PER_BATCH,
        help="files per Arrow batch handed to a Python worker; bounds worker memory (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(handler=run_ingest)


def run_ingest(args: argparse.Namespace) -> int:
    from cnnspark.chunking import ChunkingParams
    from cnnspark.ingest import IngestOptions, ingest
    from cnnspark.session import get_spark
    from cnnspark.sizes import parse_size

    options = IngestOptions(
        source=args.source,
        lake=args.lake,
        dataset=args.dataset,
        split=args.split,
        labels=args.labels,
        chunking=ChunkingParams.parse(args.min_chunk, args.avg_chunk, args.max_chunk),
        max_file_size=parse_size(args.max_file_size, what="--max-file-size"),
        files_per_batch=args.files_per_batch,
    )
    spark = get_spark("cnnspark ingest")
    summary = ingest(spark, options, progress=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
    else:
        print(summary.render())
    return 0
