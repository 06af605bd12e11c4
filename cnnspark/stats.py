"""Deduplication statistics as Python values: one piece of code for ``cnnspark stats``, ``cnnspark
sql`` and ``cnnspark report``.

Every function here runs Spark SQL over the views of :mod:`cnnspark.sql` (call :func:`open_lake`
first) and brings back only small aggregates; none reads chunk bytes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnspark import sql
from cnnspark.errors import ConfigError
from cnnspark.lake import Lake
from cnnspark.sizes import format_size

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

STATS_COLUMNS = (
    "scope", "dataset", "split", "files", "logical_bytes", "unique_chunks", "physical_bytes",
    "exclusive_chunks", "exclusive_bytes", "stored_bytes", "dedup_ratio", "savings_percent",
)
# Dataset rows first, then their splits; the lake row last.
_STATS_ORDER = (
    "ORDER BY CASE scope WHEN 'lake' THEN 1 ELSE 0 END, dataset, "
    "CASE scope WHEN 'dataset' THEN 0 ELSE 1 END, split"
)


def open_lake(spark: SparkSession, lake: Lake | str, *, include_chunk_data: bool = False) -> Lake:
    """Check that the lake exists and register its views (:func:`cnnspark.sql.register`)."""
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    sql.register(spark, lake, include_chunk_data=include_chunk_data)
    return lake


def collect(spark: SparkSession, text: str) -> list[dict[str, Any]]:
    """Run a query over the views and return its rows as dicts (small results only)."""
    return [row.asDict(recursive=True) for row in sql.query(spark, text).collect()]


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ---------------------------------------------------------------------------------------------
# dedup_stats


def datasets(spark: SparkSession) -> list[str]:
    return [r["dataset"] for r in collect(spark, "SELECT DISTINCT dataset FROM manifests ORDER BY dataset")]


def dedup_stats(spark: SparkSession, dataset: str | None = None) -> list[dict[str, Any]]:
    """Rows of ``dedup_stats``, ordered; only ``dataset``'s rows (dataset + its splits) if given."""
    where = ""
    if dataset is not None:
        known = datasets(spark)
        if dataset not in known:
            raise ConfigError(
                f"--dataset {dataset!r}: no such dataset in the lake; it holds "
                + (", ".join(repr(d) for d in known) if known else "no datasets yet")
            )
        where = f"WHERE scope <> 'lake' AND dataset = {_quote(dataset)} "
    return collect(spark, f"SELECT {', '.join(STATS_COLUMNS)} FROM dedup_stats {where}{_STATS_ORDER}")


def render_stats(rows: Sequence[dict[str, Any]]) -> str:
    """``dedup_stats`` rows as an aligned table with human sizes."""
    header = ("scope", "dataset", "split", "files", "logical", "physical", "stored", "chunks", "exclusive", "ratio", "savings")
    body = [
        (
            r["scope"], r["dataset"], r["split"], f"{r['files']:,}",
            format_size(r["logical_bytes"]), format_size(r["physical_bytes"]), format_size(r["stored_bytes"]),
            f"{r['unique_chunks']:,}", format_size(r["exclusive_bytes"]),
            "-" if r["dedup_ratio"] is None else f"{r['dedup_ratio']:.2f}x",
            f"{r['savings_percent']:.1f}%",
        )
        for r in rows
    ]
    note = (
        "physical = distinct chunk payload a scope references (shared chunks count in every scope);\n"
        "stored = on disk after Parquet compression (lake row: chunks table files; others: proportional share);\n"
        "exclusive = payload referenced by no other scope of the same level."
    )
    return format_table(header, body, right=(3, 4, 5, 6, 7, 8, 9, 10)) + "\n" + note


# ---------------------------------------------------------------------------------------------
# Text tables and JSON


def jsonable(value: Any) -> Any:
    """A value Spark returned, as JSON-ready Python: binary as hex, times as ISO 8601."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "asDict"):
        return jsonable(value.asDict(recursive=True))
    return value


def to_json(rows: Sequence[dict[str, Any]]) -> str:
    """A JSON list of row objects."""
    return json.dumps([jsonable(r) for r in rows], indent=2)


def cell(value: Any) -> str:
    """One value as table text: NULL, hex for binary, short floats, JSON for nested values."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1e15 else f"{value:.6g}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (dict, list, tuple)) or hasattr(value, "asDict"):
        return json.dumps(jsonable(value))
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value).replace("\n", "\\n")


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[int] | None = None) -> str:
    """An aligned plain-text table; numbers (or the ``right`` column indexes) are right-aligned."""
    text = [[cell(v) for v in row] for row in rows]
    if right is None:
        right = [
            i for i in range(len(columns))
            if rows and all(isinstance(r[i], (int, float, decimal.Decimal)) and not isinstance(r[i], bool) for r in rows if r[i] is not None)
            and any(r[i] is not None for r in rows)
        ]
    widths = [max([len(c)] + [len(t[i]) for t in text]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out.extend(line(t) for t in text)
    return "\n".join(out)


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[dict[str, Any]]
    truncated: bool

    def render(self) -> str:
        table = format_table(self.columns, [[r[c] for c in self.columns] for r in self.rows])
        count = f"({len(self.rows)} row{'s' if len(self.rows) != 1 else ''}"
        count += ", more not shown: raise --max-rows or use 0 for all)" if self.truncated else ")"
        return table + "\n" + count


def run_query(spark: SparkSession, text: str, *, max_rows: int = 1000) -> QueryResult:
    """Run one query over the views; at most ``max_rows`` rows come back (0: all)."""
    from pyspark.errors import PySparkException

    frame = sql.query(spark, text)
    columns = frame.columns
    if len(set(columns)) != len(columns):
        raise sql.QueryError(f"the query returns duplicate column names ({', '.join(columns)}); give them aliases with AS")
    try:
        rows = (frame.limit(max_rows + 1) if max_rows else frame).collect()
    except PySparkException as e:
        raise sql.QueryError(sql.describe_error(e)) from e
    truncated = bool(max_rows) and len(rows) > max_rows
    rows = rows[:max_rows] if max_rows else rows
    return QueryResult(columns, [dict(zip(columns, tuple(r), strict=True)) for r in rows], truncated)


# ---------------------------------------------------------------------------------------------
# Distributions for the report


def chunk_size_histogram(spark: SparkSession, bins: int = 40) -> list[dict[str, int]]:
    """Chunks per size bin of the ``chunks`` table: ``lo`` <= size < ``hi``, ``chunks``, ``bytes``."""
    bounds = collect(spark, "SELECT min(size) AS lo, max(size) AS hi FROM chunks")[0]
    if bounds["lo"] is None:
        return []
    lo, hi = int(bounds["lo"]), int(bounds["hi"])
    width = max(1, math.ceil((hi - lo + 1) / bins))
    rows = collect(
        spark,
        f"SELECT CAST(floor((size - {lo}) / {width}) AS INT) AS bin, count(*) AS chunks, sum(CAST(size AS BIGINT)) AS bytes "
        "FROM chunks GROUP BY 1 ORDER BY 1",
    )
    return [{"lo": lo + r["bin"] * width, "hi": lo + (r["bin"] + 1) * width, "chunks": r["chunks"], "bytes": r["bytes"]} for r in rows]


def sharing_histogram(spark: SparkSession) -> list[dict[str, int]]:
    """How many files reference each chunk: ``files`` -> number of ``chunks`` (and their payload)."""
    return collect(
        spark,
        """
        SELECT files, count(*) AS chunks, sum(chunk_size) AS bytes FROM (
          SELECT chunk_id, first(chunk_size) AS chunk_size, count(DISTINCT dataset, split, relative_path) AS files
          FROM chunk_refs GROUP BY chunk_id)
        GROUP BY files ORDER BY files
        """,
    )


def top_duplicates(spark: SparkSession, n: int = 10, paths_per_content: int = 20) -> list[dict[str, Any]]:
    """The contents with the most copies: hash, size, copies, saved bytes and where the copies are."""
    top = collect(
        spark,
        f"""
        SELECT content_hash, first(size) AS size, count(*) AS copies, (count(*) - 1) * first(size) AS saved_bytes
        FROM manifests GROUP BY content_hash HAVING count(*) > 1
        ORDER BY copies DESC, saved_bytes DESC, content_hash LIMIT {int(n)}
        """,
    )
    if not top:
        return []
    hashes = ", ".join(f"X'{bytes(r['content_hash']).hex()}'" for r in top)
    places: dict[bytes, list[dict[str, str]]] = {}
    for r in collect(
        spark,
        f"SELECT content_hash, dataset, split, relative_path FROM manifests WHERE content_hash IN ({hashes}) "
        "ORDER BY dataset, split, relative_path",
    ):
        places.setdefault(bytes(r["content_hash"]), []).append(
            {"dataset": r["dataset"], "split": r["split"], "relative_path": r["relative_path"]}
        )
    return [
        {
            "content_hash": bytes(r["content_hash"]).hex(), "size": r["size"], "copies": r["copies"],
            "saved_bytes": r["saved_bytes"], "places": places.get(bytes(r["content_hash"]), [])[:paths_per_content],
        }
        for r in top
    ]


def quarantine_reasons(spark: SparkSession) -> list[dict[str, Any]]:
    """Quarantined files per reason: ``reason``, ``files``, ``bytes``, most files first."""
    return collect(
        spark,
        "SELECT reason, count(*) AS files, coalesce(sum(size), 0) AS bytes FROM quarantine GROUP BY reason ORDER BY files DESC, reason",
    )


def overlap_summary(spark: SparkSession) -> list[dict[str, Any]]:
    """``content_overlap`` per pair of scopes: pairs, distinct contents, files each side, label conflicts."""
    return collect(
        spark,
        """
        SELECT kind, dataset_a, split_a, dataset_b, split_b, count(*) AS pairs,
               count(DISTINCT content_hash) AS contents,
               count(DISTINCT path_a) AS files_a, count(DISTINCT path_b) AS files_b,
               count_if(NOT (label_a <=> label_b)) AS label_conflicts
        FROM content_overlap
        GROUP BY kind, dataset_a, split_a, dataset_b, split_b
        ORDER BY CASE kind WHEN 'cross_split' THEN 0 ELSE 1 END, dataset_a, split_a, dataset_b, split_b
        """,
    )


def leakage_pairs(spark: SparkSession, limit: int = 50) -> list[dict[str, Any]]:
    """The first ``limit`` cross-split pairs of identical files (train/test leakage)."""
    return collect(
        spark,
        "SELECT dataset_a AS dataset, split_a, path_a, label_a, split_b, path_b, label_b, size FROM content_overlap "
        f"WHERE kind = 'cross_split' ORDER BY dataset_a, split_a, path_a, split_b, path_b LIMIT {int(limit)}",
    )


def dataset_growth(spark: SparkSession) -> list[dict[str, Any]]:
    """Datasets in order of first ingest, with the chunk payload each added that no earlier one had.

    ``new_physical_bytes`` is what storing the dataset cost on top of the datasets before it (a
    chunk is attributed to the first dataset, by first ingest time, that references it).
    """
    return collect(
        spark,
        """
        WITH ds AS (
          SELECT dataset, min(ingested_at) AS first_ingested, count(*) AS files, sum(size) AS logical_bytes
          FROM manifests GROUP BY dataset),
        ranked AS (SELECT *, row_number() OVER (ORDER BY first_ingested, dataset) AS ord FROM ds),
        firsts AS (
          SELECT r.chunk_id, first(r.chunk_size) AS chunk_size, min(k.ord) AS ord
          FROM (SELECT DISTINCT dataset, chunk_id, chunk_size FROM chunk_refs) r JOIN ranked k ON r.dataset = k.dataset
          GROUP BY r.chunk_id)
        SELECT k.ord, k.dataset, k.first_ingested, k.files, k.logical_bytes,
               coalesce(sum(f.chunk_size), 0) AS new_physical_bytes
        FROM ranked k LEFT JOIN firsts f ON f.ord = k.ord
        GROUP BY k.ord, k.dataset, k.first_ingested, k.files, k.logical_bytes
        ORDER BY k.ord
        """,
    )


@dataclass
class ReportData:
    """Everything the HTML report shows, gathered with one Spark session."""

    lake: str
    stats: list[dict[str, Any]]
    growth: list[dict[str, Any]]
    chunk_sizes: list[dict[str, int]]
    sharing: list[dict[str, int]]
    duplicates: list[dict[str, Any]]
    quarantine: list[dict[str, Any]]
    overlap: list[dict[str, Any]]
    leakage: list[dict[str, Any]]

    @property
    def lake_row(self) -> dict[str, Any]:
        return next(r for r in self.stats if r["scope"] == "lake")


def report_data(spark: SparkSession, lake: Lake | str, *, top: int = 10) -> ReportData:
    """Register the lake's views and gather the report's numbers."""
    lake = open_lake(spark, lake)
    return ReportData(
        lake=lake.uri,
        stats=dedup_stats(spark),
        growth=dataset_growth(spark),
        chunk_sizes=chunk_size_histogram(spark),
        sharing=sharing_histogram(spark),
        duplicates=top_duplicates(spark, top),
        quarantine=quarantine_reasons(spark),
        overlap=overlap_summary(spark),
        leakage=leakage_pairs(spark),
    )
