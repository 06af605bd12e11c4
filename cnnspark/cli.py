"""The ``cnnspark`` command line: one subcommand per job; each parses flags and calls the library.

Exit codes: 0 success, 1 a check failed (e.g. verify found corruption), 2 bad input or a
missing lake/table (the message says what to do), 3 an unexpected error (traceback shown).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from cnnspark import __version__
from cnnspark.errors import CnnsparkError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = fn
        return fn

    return register


def _add_ingest(sub: argparse._SubParsersAction) -> None:
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
        help="files larger than this go to quarantine as too_large (default 1GiB, at most 2GiB-1)",
    )
    p.add_argument(
        "--files-per-batch", type=int, default=DEFAULT_FILES_PER_BATCH,
        help="files per Arrow batch handed to a Python worker; bounds worker memory (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


@command("ingest")
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


PARSER_BUILDERS = [_add_ingest]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnspark",
        description="Store image training data once in Delta Lake and train CNNs on it with Spark.",
    )
    parser.add_argument("--version", action="version", version=f"cnnspark {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSER_BUILDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command and return its exit code (never raises for user errors)."""
    args = build_parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
    except CnnsparkError as e:
        print(f"cnnspark {args.command}: error: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print(f"cnnspark {args.command}: interrupted", file=sys.stderr)
        code = 130
    return code


def run(argv: Sequence[str] | None = None) -> None:
    """Entry point for console scripts and jobs: a deterministic exit code.

    Native libraries (the JVM gateway, delta-rs) can abort at interpreter exit and replace the
    exit code (delta-rs issue 2184); flushing and leaving with os._exit keeps the code we chose.
    """
    code = 3
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors and --help
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BaseException:  # noqa: BLE001 - report any crash with its traceback, then exit 3
        import traceback

        traceback.print_exc()
        code = 3
    finally:
        _stop_spark()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _stop_spark() -> None:
    """Stop the session we ran on, except on Databricks, where the cluster owns it."""
    if "pyspark" not in sys.modules or "DATABRICKS_RUNTIME_VERSION" in os.environ:
        return
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
