"""``cnnspark export`` and ``cnnspark verify``: the read path's commands (no Spark needed)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="rebuild a dataset's files into a folder, byte for byte",
        description="Rebuild the files of a dataset from the lake's chunks into OUT, at their relative paths.",
    )
    p.add_argument("--lake", required=True, help="lake folder or object-store URI")
    p.add_argument("--dataset", required=True, help="dataset name")
    p.add_argument("--split", default=None, help="export only this split (default: all splits)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--cache", action="store_true", help="use (and fill) the node-local chunk cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(handler=run_export)

    v = sub.add_parser(
        "verify",
        help="re-hash every chunk and rebuilt file; exit 1 on any mismatch",
        description="Re-hash every chunk against its id and every rebuilt file against its content hash, check that "
        "every referenced chunk exists, print a report and exit 1 naming the affected files and chunks on any mismatch.",
    )
    v.add_argument("--lake", required=True, help="lake folder or object-store URI")
    v.add_argument("--dataset", default=None, help="check only this dataset's files (chunks are always all checked)")
    v.add_argument("--threads", type=int, default=4, help="row groups read and hashed in parallel (default %(default)s)")
    v.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    v.set_defaults(handler=run_verify)


def run_export(args: argparse.Namespace) -> int:
    from cnnspark.export import export

    summary = export(args.lake, args.dataset, args.out, split=args.split, cache=args.cache, progress=not args.no_progress)
    print(json.dumps(summary.to_dict(), indent=2, sort_keys=True) if args.json else summary.render())
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from cnnspark.verify import verify

    report = verify(args.lake, dataset=args.dataset, threads=args.threads, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(report.to_dict(), indent=2, sort_keys=True) if args.json else report.render())
    return 0 if report.ok else 1
