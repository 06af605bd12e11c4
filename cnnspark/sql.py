"""Spark SQL views over a lake: what is stored, what is shared, how much deduplication saved.

``register(spark, lake)`` creates these temporary views in the session (names are fixed; call it
again to see commits made after it ran — each view reads the snapshot current at registration):

``chunks``
    One row per unique chunk: ``id`` (16-byte XXH3-128), ``key`` (int64), ``size``. The ``data``
    column (the chunk bytes) is left out unless ``register(..., include_chunk_data=True)``; no
    other view ever reads it.
``manifests``
    The manifests table as stored: one row per ingested file (dataset, split, label,
    relative_path, size, content_hash, chunk_ids, chunk_sizes, format, ...).
``quarantine``
    One row per file that could not be ingested: dataset, split, relative_path, size, reason, detail.
``table_files``
    One row per data file in the current snapshot of each table, from the Delta log (no data is
    read): ``table_name``, ``path``, ``size_bytes`` (on disk, after Parquet compression),
    ``num_records``.
``chunk_refs``
    One row per (file, position, chunk): ``dataset, split, relative_path, content_hash,
    position`` (0-based place of the chunk in the file), ``chunk_id, chunk_size``.
    ``posexplode`` over ``manifests.chunk_ids`` / ``chunk_sizes``.
``dedup_stats``
    One row per scope, told apart by ``scope``:

    * ``'split'``   — one per (dataset, split);
    * ``'dataset'`` — one per dataset, ``split = '*'``;
    * ``'lake'``    — one overall row, ``dataset = '*'`` and ``split = '*'`` (always present,
      zeros on an empty lake).

    ``'*'`` marks "all"; filter on ``scope`` rather than on ``'*'`` if a name could be ``*``.

    Columns, for the manifests of the scope:

    * ``files`` — number of manifests; ``logical_bytes`` — sum of their file sizes.
    * ``unique_chunks`` — distinct chunk ids they reference; ``physical_bytes`` — sum of the
      sizes of those distinct chunks (chunk payload, before Parquet compression).
      **Shared chunks count fully in every scope that references them**: a dataset's row says
      what it would cost stored alone, so the per-dataset (or per-split) physical bytes may add
      up to more than the lake row, which counts every chunk once. ``physical_bytes <=
      logical_bytes`` always holds: a scope's distinct chunks are a subset of its references.
    * ``exclusive_chunks`` / ``exclusive_bytes`` — the chunks referenced by this scope and by no
      other scope of the same level (no other (dataset, split) for a split row; no other
      dataset for a dataset row; every chunk for the lake row): what deleting the scope frees.
    * ``stored_bytes`` — bytes on disk after Parquet compression. Lake row: the sum of the chunks
      table's current file sizes from the Delta log (``table_files``), which also covers chunks
      no manifest references any more. Other rows: attributed proportionally,
      ``round(physical_bytes * lake stored / lake payload)``, where lake payload is the sum of
      ``chunks.size`` over the whole chunks table. Chunks that no manifest references any more
      (left behind when a changed file's manifest was replaced) are not in any
      ``physical_bytes``, but they are on disk, so they are in the lake's ``stored_bytes``.
    * ``dedup_ratio`` = ``logical_bytes / physical_bytes`` (NULL when physical_bytes is 0);
      ``savings_percent`` = ``100 * (1 - physical_bytes / logical_bytes)`` (0 when logical_bytes is 0).

``content_overlap``
    Identical files (same ``content_hash``) in different (dataset, split) scopes: one row per
    unordered pair of manifests. Columns ``kind, content_hash, size, dataset_a, split_a, path_a,
    label_a, dataset_b, split_b, path_b, label_b``. ``kind`` is ``'cross_split'`` (same dataset,
    different splits, ``split_a < split_b``: train/test leakage) or ``'cross_dataset'``
    (``dataset_a < dataset_b``, e.g. two versions of a dataset). Copies inside one (dataset,
    split) are not pairs here (see ``manifests`` grouped by ``content_hash``). A content present
    ``n`` times in one scope and ``m`` times in another gives ``n * m`` rows, so filter by
    ``kind`` or dataset when many versions share most files. Labels are shown because the same
    image under two different labels is worth knowing about.

Every statistic is computed from the id and size columns of ``chunks`` and ``manifests`` and
from the Delta log: chunk bytes are never scanned. Tables are read as Delta where Spark has the
Delta jars (Databricks), else as exactly the current snapshot's Parquet files
(:meth:`cnnspark.lake.Lake.dataframe`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnspark.errors import CnnsparkError
from cnnspark.lake import Lake
from cnnspark.tables import CHUNKS, MANIFESTS, QUARANTINE, TABLES

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

VIEWS = ("chunks", "manifests", "quarantine", "table_files", "chunk_refs", "dedup_stats", "content_overlap")

CHUNK_REFS_SQL = """
SELECT m.dataset, m.split, m.relative_path, m.content_hash,
       r.position, r.chunk_id, element_at(m.chunk_sizes, r.position + 1) AS chunk_size
FROM manifests m
LATERAL VIEW posexplode(m.chunk_ids) r AS position, chunk_id
"""

DEDUP_STATS_SQL = """
WITH split_chunks AS (   -- each chunk once per (dataset, split) that references it
  SELECT dataset, split, chunk_id, first(chunk_size) AS chunk_size
  FROM chunk_refs GROUP BY dataset, split, chunk_id
),
flagged AS (             -- one pass per chunk: how widely it is shared, and one row to count it on
  SELECT dataset, split, chunk_size,
         count(*) OVER (PARTITION BY chunk_id) AS n_splits,
         size(collect_set(dataset) OVER (PARTITION BY chunk_id)) AS n_datasets,
         row_number() OVER (PARTITION BY chunk_id, dataset ORDER BY split) = 1 AS first_in_dataset,
         row_number() OVER (PARTITION BY chunk_id ORDER BY dataset, split) = 1 AS first_in_lake
  FROM split_chunks
),
phys AS (                -- level: 0 = (dataset, split), 1 = dataset, 3 = lake
  SELECT dataset, split, grouping_id(dataset, split) AS level,
         count(*) AS split_chunks, sum(chunk_size) AS split_bytes,
         count_if(n_splits = 1) AS split_excl_chunks, sum(IF(n_splits = 1, chunk_size, 0)) AS split_excl_bytes,
         count_if(first_in_dataset) AS dataset_chunks, sum(IF(first_in_dataset, chunk_size, 0)) AS dataset_bytes,
         count_if(first_in_dataset AND n_datasets = 1) AS dataset_excl_chunks,
         sum(IF(first_in_dataset AND n_datasets = 1, chunk_size, 0)) AS dataset_excl_bytes,
         count_if(first_in_lake) AS lake_chunks, sum(IF(first_in_lake, chunk_size, 0)) AS lake_bytes
  FROM flagged GROUP BY GROUPING SETS ((dataset, split), (dataset), ())
),
files AS (
  SELECT dataset, split, grouping_id(dataset, split) AS level, count(*) AS files, sum(size) AS logical_bytes
  FROM manifests GROUP BY GROUPING SETS ((dataset, split), (dataset))
  UNION ALL
  SELECT NULL, NULL, 3, count(*), coalesce(sum(size), 0) FROM manifests   -- always one row, even when empty
),
scopes AS (
  SELECT CASE f.level WHEN 0 THEN 'split' WHEN 1 THEN 'dataset' ELSE 'lake' END AS scope,
         coalesce(f.dataset, '*') AS dataset, coalesce(f.split, '*') AS split,
         f.files, f.logical_bytes,
         coalesce(CASE f.level WHEN 0 THEN p.split_chunks WHEN 1 THEN p.dataset_chunks ELSE p.lake_chunks END, 0) AS unique_chunks,
         coalesce(CASE f.level WHEN 0 THEN p.split_bytes WHEN 1 THEN p.dataset_bytes ELSE p.lake_bytes END, 0) AS physical_bytes,
         coalesce(CASE f.level WHEN 0 THEN p.split_excl_chunks WHEN 1 THEN p.dataset_excl_chunks ELSE p.lake_chunks END, 0)
           AS exclusive_chunks,
         coalesce(CASE f.level WHEN 0 THEN p.split_excl_bytes WHEN 1 THEN p.dataset_excl_bytes ELSE p.lake_bytes END, 0)
           AS exclusive_bytes
  FROM files f LEFT JOIN phys p
    ON f.level = p.level AND f.dataset <=> p.dataset AND f.split <=> p.split
),
totals AS (
  SELECT (SELECT coalesce(sum(size_bytes), 0) FROM table_files WHERE table_name = 'chunks') AS stored,
         (SELECT coalesce(sum(CAST(size AS BIGINT)), 0) FROM chunks) AS payload
)
SELECT s.scope, s.dataset, s.split,
       CAST(s.files AS BIGINT) AS files,
       CAST(s.logical_bytes AS BIGINT) AS logical_bytes,
       CAST(s.unique_chunks AS BIGINT) AS unique_chunks,
       CAST(s.physical_bytes AS BIGINT) AS physical_bytes,
       CAST(s.exclusive_chunks AS BIGINT) AS exclusive_chunks,
       CAST(s.exclusive_bytes AS BIGINT) AS exclusive_bytes,
       CAST(CASE WHEN s.scope = 'lake' THEN t.stored
                 WHEN t.payload > 0 THEN round(s.physical_bytes * (CAST(t.stored AS DOUBLE) / t.payload))
                 ELSE 0 END AS BIGINT) AS stored_bytes,
       CASE WHEN s.physical_bytes > 0 THEN CAST(s.logical_bytes AS DOUBLE) / s.physical_bytes END AS dedup_ratio,
       CASE WHEN s.logical_bytes > 0 THEN 100.0 * (1.0 - CAST(s.physical_bytes AS DOUBLE) / s.logical_bytes)
            ELSE 0.0 END AS savings_percent
FROM scopes s CROSS JOIN totals t
"""

_OVERLAP_COLUMNS = """
  a.content_hash, a.size,
  a.dataset AS dataset_a, a.split AS split_a, a.relative_path AS path_a, a.label AS label_a,
  b.dataset AS dataset_b, b.split AS split_b, b.relative_path AS path_b, b.label AS label_b"""

CONTENT_OVERLAP_SQL = f"""
SELECT 'cross_split' AS kind,{_OVERLAP_COLUMNS}
FROM manifests a JOIN manifests b
  ON a.content_hash = b.content_hash AND a.dataset = b.dataset AND a.split < b.split
UNION ALL
SELECT 'cross_dataset' AS kind,{_OVERLAP_COLUMNS}
FROM manifests a JOIN manifests b
  ON a.content_hash = b.content_hash AND a.dataset < b.dataset
"""

DERIVED_VIEWS = {
    "chunk_refs": CHUNK_REFS_SQL,
    "dedup_stats": DEDUP_STATS_SQL,
    "content_overlap": CONTENT_OVERLAP_SQL,
}


class QueryError(CnnsparkError):
    """A Spark SQL query over the lake's views failed to parse, resolve or run (exit code 2)."""


def table_files(spark: SparkSession, lake: Lake) -> DataFrame:
    """One row per data file of each table's current snapshot, from the Delta log only."""
    from cnnspark import delta

    rows = []
    for name in TABLES:
        uri = lake.table_uri(name)
        if not delta.table_exists(uri, lake.storage_options):
            continue
        stats = delta.file_stats(uri, lake.storage_options)
        columns = stats.column_names
        paths = stats.column("path").to_pylist()
        sizes = stats.column("size_bytes").to_pylist()
        records = stats.column("num_records").to_pylist() if "num_records" in columns else [None] * len(paths)
        rows.extend((name, p, int(s), None if r is None else int(r)) for p, s, r in zip(paths, sizes, records, strict=True))
    return spark.createDataFrame(rows, "table_name string, path string, size_bytes bigint, num_records bigint")


def register(spark: SparkSession, lake: Lake | str, *, include_chunk_data: bool = False) -> dict[str, DataFrame]:
    """Create (or replace) the temporary views listed in this module's docstring.

    Raises :class:`cnnspark.errors.LakeError` when the lake has no manifests table. Returns the
    views as DataFrames by name. Missing ``chunks``/``quarantine`` tables read as empty.
    """
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    lake.require()
    chunks = lake.dataframe(spark, CHUNKS)
    if not include_chunk_data:
        chunks = chunks.select("id", "key", "size")
    frames = {
        "chunks": chunks,
        "manifests": lake.dataframe(spark, MANIFESTS),
        "quarantine": lake.dataframe(spark, QUARANTINE),
        "table_files": table_files(spark, lake),
    }
    for name, frame in frames.items():
        frame.createOrReplaceTempView(name)
    for name, text in DERIVED_VIEWS.items():
        frame = spark.sql(text)
        frame.createOrReplaceTempView(name)
        frames[name] = frame
    return frames


def query(spark: SparkSession, text: str) -> DataFrame:
    """``spark.sql(text)``, with Spark's parse and analysis errors as a one-line :class:`QueryError`."""
    from pyspark.errors import PySparkException

    if not text.strip():
        raise QueryError("the query is empty; pass one SQL statement, e.g. \"SELECT * FROM dedup_stats\"")
    try:
        return spark.sql(text)
    except PySparkException as e:
        raise QueryError(describe_error(e)) from e


def describe_error(error: BaseException) -> str:
    """The first meaningful line of a Spark error, plus the views a query can use."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    if len(first) > 300:
        first = first[:297] + "..."
    return f"query failed: {first} (views: {', '.join(VIEWS)})"
