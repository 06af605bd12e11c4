"""``cnnspark stats``, ``cnnspark sql`` and ``cnnspark report``: statistics over a lake's views."""

from __future__ import annotations

import argparse

VIEWS_HELP = "views: chunks (no bytes), manifests, quarantine, table_files, chunk_refs, dedup_stats, content_overlap"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stats",
        help="deduplication statistics per dataset, split and lake",
        description="Files, logical bytes, unique chunks, physical and stored bytes, dedup ratio and savings "
        "per (dataset, split), per dataset and for the whole lake (the dedup_stats view).",
    )
    p.add_argument("--lake", required=True, help="lake folder or object-store URI")
    p.add_argument("--dataset", help="only this dataset's rows (the dataset and its splits)")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows (raw byte counts) on stdout")
    p.set_defaults(handler=run_stats)

    q = sub.add_parser(
        "sql",
        help="run a Spark SQL query over the lake's views",
        description=f"Run one Spark SQL query over the lake's views and print the result. {VIEWS_HELP}.",
        epilog="example: cnnspark sql --lake LAKE \"SELECT * FROM content_overlap WHERE kind = 'cross_split'\"",
    )
    q.add_argument("query", metavar="QUERY", help="one SQL statement, quoted")
    q.add_argument("--lake", required=True, help="lake folder or object-store URI")
    q.add_argument("--json", action="store_true", help="print a JSON list of row objects (binary values as hex)")
    q.add_argument("--max-rows", type=int, default=1000, help="rows to print at most; 0 for all (default %(default)s)")
    q.add_argument("--include-chunk-data", action="store_true", help="let the chunks view expose the data column (chunk bytes)")
    q.set_defaults(handler=run_sql)

    r = sub.add_parser(
        "report",
        help="write a self-contained HTML report with plots",
        description="Write one HTML page (plots embedded, nothing fetched) with savings per dataset, chunk size and "
        "sharing distributions, the most duplicated files, cross-split overlap and quarantine reasons.",
    )
    r.add_argument("--lake", required=True, help="lake folder or object-store URI")
    r.add_argument("--out", required=True, help="HTML file to write, e.g. report.html")
    r.add_argument("--top", type=int, default=10, help="most duplicated files to show (default %(default)s)")
    r.set_defaults(handler=run_report)


def _lake(uri: str):
    """The lake, checked before Spark starts so a wrong path fails fast."""
    from cnnspark.lake import Lake

    lake = Lake(uri)
    lake.require()
    return lake


def run_stats(args: argparse.Namespace) -> int:
    from cnnspark import stats
    from cnnspark.session import get_spark

    lake = _lake(args.lake)
    spark = get_spark("cnnspark stats")
    stats.open_lake(spark, lake)
    rows = stats.dedup_stats(spark, args.dataset)
    print(stats.to_json(rows) if args.json else stats.render_stats(rows))
    return 0


def run_sql(args: argparse.Namespace) -> int:
    from cnnspark import stats
    from cnnspark.errors import ConfigError
    from cnnspark.session import get_spark

    if args.max_rows < 0:
        raise ConfigError(f"--max-rows must be 0 (all) or more, got {args.max_rows}")
    lake = _lake(args.lake)
    spark = get_spark("cnnspark sql")
    stats.open_lake(spark, lake, include_chunk_data=args.include_chunk_data)
    result = stats.run_query(spark, args.query, max_rows=args.max_rows)
    print(stats.to_json(result.rows) if args.json else result.render())
    return 0


def run_report(args: argparse.Namespace) -> int:
    import sys

    from cnnspark.report import write_report
    from cnnspark.session import get_spark

    lake = _lake(args.lake)
    spark = get_spark("cnnspark report")
    result = write_report(spark, lake, args.out, top=args.top)
    plots = ", ".join(f"{name} ({n} bars)" if n else f"{name} (empty)" for name, n in result.plots.items())
    print(f"wrote {result.path} ({result.bytes:,} bytes): {plots}", file=sys.stderr)
    print(result.path)
    return 0
