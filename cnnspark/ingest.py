"""The ingest job: chunk and hash source images in Spark tasks into a lake's Delta tables.

Plan (every step runs in Spark; only file metadata and small aggregates reach the driver):

1. List SOURCE with ``binaryFile`` (content pruned); files over ``max_file_size`` go to
   quarantine as ``too_large``.
2. Analyse pass: tasks read each file, sniff its format and header, cut it with FastCDC and hash
   the chunks and the whole file. Output is metadata only (ids and sizes, no bytes); bad files
   become quarantine rows, files Spark could not read become ``unreadable``.
3. Classify against the dataset's current manifests: new, changed (same path, new content) or
   unchanged (skipped).
4. Chunk plan: the chunk ids of new and changed files, minus ids the lake already has (an
   anti-join over the ``id`` column only), each assigned to exactly one owning file.
5. Write pass: tasks re-read only the files that own new chunks and write those chunks, sorted by
   key, straight into the chunks table folder. Manifests and quarantine rows are written by
   tasks too. Changed files replace their old manifest rows copy-on-write.
6. The driver commits one Delta transaction per table: chunks first, then manifests, then
   quarantine, so a manifest never points at a missing chunk.
"""

from __future__ import annotations

import math
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import pyarrow as pa

from cnnspark import delta
from cnnspark.chunking import ChunkingParams, chunk_id, chunk_key, content_hash, cut_points
from cnnspark.errors import ConfigError, IntegrityError, SourceError
from cnnspark.formats import REASON_EMPTY, InvalidImage, inspect_image
from cnnspark.lake import Lake, spark_path
from cnnspark.sizes import GiB, format_size
from cnnspark.tables import (
    CHUNKS,
    CHUNKS_SCHEMA,
    MANIFESTS,
    MANIFESTS_SCHEMA,
    QUARANTINE,
    QUARANTINE_SCHEMA,
    UTC_TIMESTAMP,
    WRITE_OPTIONS,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# The largest file ingested with default memory. binaryFile hands a whole file to a task as one
# value, and Spark/Arrow cap one binary value at 2 GiB; larger files go to quarantine.
DEFAULT_MAX_FILE_SIZE = 1 * GiB
HARD_MAX_FILE_SIZE = 2 * GiB - 1
# Files per Arrow batch between the JVM and Python workers: bounds a worker's memory to about
# this many files' bytes.
DEFAULT_FILES_PER_BATCH = 16
# Manifest rows per output file when the manifests of a run are written.
MANIFEST_ROWS_PER_FILE = 200_000

REASON_TOO_LARGE = "too_large"
REASON_UNREADABLE = "unreadable"
GLOB_CHARS = re.compile(r"[*?\[{]")

ANALYZED_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("relative_path", pa.string()),
        ("size", pa.int64()),
        ("source_modified_at", UTC_TIMESTAMP),
        ("reason", pa.string()),  # null when the file is good
        ("detail", pa.string()),
        ("content_hash", pa.binary()),
        ("chunk_ids", pa.list_(pa.binary())),
        ("chunk_sizes", pa.list_(pa.int32())),
        ("format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("channels", pa.int32()),
        ("bit_depth", pa.int32()),
        ("pages", pa.int32()),
        ("dirname_label", pa.string()),
    ]
)
PLAN_SCHEMA = pa.schema([("path", pa.string()), ("positions", pa.list_(pa.int32())), ("ids", pa.list_(pa.binary()))])


@dataclass
class IngestSummary:
    """What one ingest run did; printed at the end and returned as JSON with ``--json``."""

    lake: str
    dataset: str
    split: str
    run_id: str
    files_seen: int = 0
    files_ingested: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    files_quarantined: int = 0
    quarantine_rows_added: int = 0
    logical_bytes: int = 0
    new_chunks: int = 0
    new_physical_bytes: int = 0
    lake_logical_bytes: int = 0
    lake_physical_bytes: int = 0
    lake_dedup_ratio: float = 0.0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    committed_versions: dict[str, int | None] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        lines = [
            f"ingest run {self.run_id}: dataset {self.dataset!r} split {self.split!r} -> {self.lake}",
            f"  files seen         {self.files_seen}",
            f"  ingested           {self.files_ingested} ({self.files_new} new, {self.files_changed} changed)",
            f"  unchanged          {self.files_unchanged}",
            f"  quarantined        {self.files_quarantined}"
            + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(self.quarantine_reasons.items()))})" if self.quarantine_reasons else ""),
            f"  logical bytes      {format_size(self.logical_bytes)} in the files ingested",
            f"  new physical bytes {format_size(self.new_physical_bytes)} in {self.new_chunks} new chunks",
            f"  lake dedup ratio   {self.lake_dedup_ratio:.2f}x ({format_size(self.lake_logical_bytes)} logical, "
            f"{format_size(self.lake_physical_bytes)} stored as chunks)",
            f"  took               {self.seconds:.1f} s",
        ]
        if self.files_ingested == 0 and self.quarantine_rows_added == 0:
            lines.append("  nothing new: the lake already holds every file of this source (nothing committed)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Source paths


def _strip_file_scheme(path: str) -> str:
    """``file:/a/b`` and ``file:///a/b`` -> ``/a/b``; other URIs unchanged."""
    if path.startswith("file:"):
        return "/" + path[len("file:") :].lstrip("/")
    return path


def source_root(source: str) -> str:
    """The folder relative paths are taken from: SOURCE itself, or a glob's fixed prefix."""
    path = _strip_file_scheme(source)
    if "://" not in path and not path.startswith("/"):
        import os

        path = os.path.abspath(path)
    if GLOB_CHARS.search(path):
        parts = path.split("/")
        fixed = []
        for part in parts:
            if GLOB_CHARS.search(part):
                break
            fixed.append(part)
        path = "/".join(fixed)
    return path.rstrip("/")


def relative_to(path: str, root: str) -> str:
    """``path`` relative to ``root`` (both as Spark lists them); the file name if SOURCE is a file."""
    p = _strip_file_scheme(path)
    # Hadoop qualifies s3a://bucket/x the same as given; compare without scheme differences.
    if p == root:
        return posixpath.basename(p)
    if p.startswith(root + "/"):
        return p[len(root) + 1 :]
    return posixpath.basename(p)


def zero_byte_files(source: str) -> list[str]:
    """Zero-byte files under SOURCE, as Spark would name them.

    Spark's file index drops empty files, so they are listed here with pyarrow (local paths,
    file:, s3/s3a, gs, hdfs; ``dbfs:/`` through the ``/dbfs`` mount). On other schemes the
    list is empty and the README says so.
    """
    import fnmatch

    import pyarrow.fs as pafs

    root = source_root(source)
    pattern = _strip_file_scheme(source).rstrip("/") if GLOB_CHARS.search(source) else None
    listing_root = root
    if listing_root.startswith("dbfs:/"):
        listing_root = "/dbfs/" + listing_root[len("dbfs:/") :].lstrip("/")
    elif listing_root.startswith("s3a://"):
        listing_root = "s3://" + listing_root[len("s3a://") :]
    try:
        fs, base = (pafs.LocalFileSystem(), listing_root) if listing_root.startswith("/") else pafs.FileSystem.from_uri(listing_root)
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.File:
            infos = [info]
        elif info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        else:
            return []
    except (OSError, pa.ArrowException):
        return []
    found = []
    for f in infos:
        if f.type != pafs.FileType.File or f.size != 0:
            continue
        rel = f.path[len(base.rstrip("/")) + 1 :] if f.path != base else posixpath.basename(f.path)
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue  # Spark skips hidden files and folders; so do we
        name = root + "/" + rel if f.path != base else root
        if pattern and not fnmatch.fnmatchcase(name, pattern):
            continue
        found.append("file:" + name if name.startswith("/") else name)
    return found


def dirname_label(relative_path: str) -> str | None:
    """ImageFolder layout: the first folder under SOURCE is the label; none for top-level files."""
    head, sep, _ = relative_path.partition("/")
    return head if sep else None


# ---------------------------------------------------------------------------------------------
# Task functions (run in Spark's Python workers; they must only capture picklable values)


def analyze_file(data: bytes, cdc) -> dict:
    """Header facts, content hash and chunk ids/sizes of one file, or a quarantine reason."""
    try:
        info = inspect_image(data)
    except InvalidImage as e:
        return {"reason": e.reason, "detail": str(e)}
    view = memoryview(data)
    ids, sizes = [], []
    for offset, length in cut_points(view, cdc):
        ids.append(chunk_id(view[offset : offset + length]))
        sizes.append(length)
    return {
        "reason": None,
        "detail": None,
        "content_hash": content_hash(view),
        "chunk_ids": ids,
        "chunk_sizes": sizes,
        "format": info.format,
        "width": info.width,
        "height": info.height,
        "channels": info.channels,
        "bit_depth": info.bit_depth,
        "pages": info.pages,
    }


def _analyzer(root: str, params: ChunkingParams) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def analyze(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        cdc = params.chunker()
        for batch in batches:
            rows = []
            cols = batch.to_pydict()
            for path, length, mtime, content in zip(
                cols["path"], cols["length"], cols["modificationTime"], cols["content"], strict=True
            ):
                rel = relative_to(path, root)
                row = {
                    "source_uri": path,
                    "relative_path": rel,
                    "size": length,
                    "source_modified_at": mtime,
                    "dirname_label": dirname_label(rel),
                }
                row.update(analyze_file(content, cdc))
                rows.append(row)
            yield pa.RecordBatch.from_pylist(rows, schema=ANALYZED_SCHEMA)

    return analyze


def _chunk_emitter(
    table_uri: str, params: ChunkingParams
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """Re-cut the owning files and write the planned chunks into the chunks table's folder."""

    def chunk_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        cdc = params.chunker()
        for batch in batches:
            ids, keys, sizes, datas = [], [], [], []
            cols = batch.to_pydict()
            for path, content, positions, expected in zip(
                cols["path"], cols["content"], cols["positions"], cols["ids"], strict=True
            ):
                view = memoryview(content)
                cuts = cut_points(view, cdc)
                for pos, want in zip(positions, expected, strict=True):
                    if pos >= len(cuts):
                        raise IntegrityError(f"{path} changed while it was being ingested; run the ingest again")
                    offset, length = cuts[pos]
                    piece = view[offset : offset + length]
                    got = chunk_id(piece)
                    if got != want:
                        raise IntegrityError(f"{path} changed while it was being ingested; run the ingest again")
                    ids.append(got)
                    keys.append(chunk_key(got))
                    sizes.append(length)
                    datas.append(bytes(piece))
            if ids:
                yield pa.RecordBatch.from_arrays(
                    [pa.array(ids, pa.binary()), pa.array(keys, pa.int64()), pa.array(sizes, pa.int32()), pa.array(datas, pa.binary())],
                    schema=CHUNKS_SCHEMA,
                )

    def emit(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for meta in delta.write_parquet_files(table_uri, CHUNKS_SCHEMA, chunk_batches(batches), WRITE_OPTIONS[CHUNKS], prefix="chunks"):
            yield pa.RecordBatch.from_pylist([meta], schema=delta.FILE_METADATA_SCHEMA)

    return emit


def _table_writer(
    table_uri: str, schema: pa.Schema, options: delta.WriteOptions, prefix: str
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A mapInArrow function writing its partition as Parquet files of ``schema``; yields file metadata."""

    def cast(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            table = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
            yield from table.to_batches()

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for meta in delta.write_parquet_files(table_uri, schema, cast(batches), options, prefix=prefix):
            yield pa.RecordBatch.from_pylist([meta], schema=delta.FILE_METADATA_SCHEMA)

    return write


# ---------------------------------------------------------------------------------------------
# The job


@dataclass(frozen=True)
class IngestOptions:
    """Everything an ingest run takes besides the Spark session."""

    source: str
    lake: str
    dataset: str
    split: str = "train"
    labels: str = "dirname"  # dirname | none | csv:PATH
    chunking: ChunkingParams = ChunkingParams()
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    files_per_batch: int = DEFAULT_FILES_PER_BATCH
    storage_options: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.dataset or self.dataset.strip() != self.dataset:
            raise ConfigError(f"--dataset must be a non-empty name without surrounding spaces, got {self.dataset!r}")
        if not self.split or self.split.strip() != self.split:
            raise ConfigError(f"--split must be a non-empty name without surrounding spaces, got {self.split!r}")
        if not (self.labels in ("dirname", "none") or (self.labels.startswith("csv:") and len(self.labels) > 4)):
            raise ConfigError(f"--labels must be dirname, none or csv:PATH, got {self.labels!r}")
        if not 0 < self.max_file_size <= HARD_MAX_FILE_SIZE:
            raise ConfigError(f"--max-file-size must be between 1 byte and {HARD_MAX_FILE_SIZE} bytes (2 GiB - 1)")
        if self.files_per_batch < 1:
            raise ConfigError("files per batch must be at least 1")


def _say(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _list_source(spark: SparkSession, source: str) -> DataFrame:
    from pyspark.sql.utils import AnalysisException

    try:
        return (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .option("ignoreCorruptFiles", "true")
            .load(spark_path(source) if source.startswith("/") else source)
        )
    except AnalysisException as e:
        raise SourceError(f"cannot list ingest source {source}: {e.desc if hasattr(e, 'desc') else e}") from e


def _labels_frame(spark: SparkSession, labels: str) -> DataFrame:
    path = labels[len("csv:") :]
    from pyspark.sql import functions as F
    from pyspark.sql.utils import AnalysisException

    try:
        frame = spark.read.option("header", "true").csv(spark_path(path) if path.startswith("/") else path)
    except AnalysisException as e:
        raise ConfigError(f"cannot read labels file {path}: {e}") from e
    columns = [c.lower() for c in frame.columns]
    if columns[:2] != ["path", "label"]:
        raise ConfigError(f"labels file {path} must have a header line 'path,label', found {','.join(frame.columns)}")
    return frame.select(
        F.regexp_replace(F.col(frame.columns[0]), r"^\./", "").alias("relative_path"),
        F.col(frame.columns[1]).alias("csv_label"),
    ).dropDuplicates(["relative_path"])


def ingest(
    spark: SparkSession,
    options: IngestOptions,
    *,
    progress: Callable[[str], None] | None = print,
) -> IngestSummary:
    """Run one ingest of ``options.source`` into ``options.lake``; see the module docstring."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    started = time.monotonic()
    lake = Lake(options.lake, storage_options=options.storage_options)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    now = datetime.now(timezone.utc).replace(microsecond=0)
    summary = IngestSummary(lake=lake.uri, dataset=options.dataset, split=options.split, run_id=run_id)
    root = source_root(options.source)
    params = options.chunking

    _say(progress, f"[1/5] listing {options.source}")
    listing = _list_source(spark, options.source).select("path", "length", "modificationTime")
    listing = listing.withColumn("relative_path", F.udf(lambda p: relative_to(p, root))("path")).persist(StorageLevel.MEMORY_AND_DISK)
    empty_paths = zero_byte_files(options.source)
    seen = listing.count() + len(empty_paths)
    if seen == 0:
        raise SourceError(f"no files found under {options.source}; check the path (hidden files starting with . or _ are skipped)")
    summary.files_seen = seen

    _say(progress, f"[2/5] analysing {seen} files: format, header, FastCDC chunks ({params.label}), XXH3-128 hashes")
    previous_batch = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", None)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(options.files_per_batch))
    try:
        return _ingest_listed(spark, options, lake, listing, empty_paths, root, run_id, now, summary, started, progress)
    finally:
        listing.unpersist()
        if previous_batch is None:
            spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
        else:
            spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous_batch)


def _ingest_listed(spark, options, lake, listing, empty_paths, root, run_id, now, summary, started, progress) -> IngestSummary:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    params = options.chunking
    scan = _list_source(spark, options.source).filter(F.col("length") <= options.max_file_size)
    analyzed = scan.mapInArrow(_analyzer(root, params), from_arrow_schema(ANALYZED_SCHEMA)).persist(StorageLevel.MEMORY_AND_DISK)

    # Quarantine: bad content, too large, or not readable at all.
    too_large = listing.filter(F.col("length") > options.max_file_size).select(
        F.col("path").alias("source_uri"),
        "relative_path",
        F.col("length").alias("size"),
        F.lit(REASON_TOO_LARGE).alias("reason"),
        F.concat(
            F.lit("file is "), F.col("length").cast("string"),
            F.lit(f" bytes, over the {options.max_file_size}-byte limit (--max-file-size)"),
        ).alias("detail"),
    )
    unreadable = (
        listing.filter(F.col("length") <= options.max_file_size)
        .join(analyzed.select(F.col("source_uri").alias("path")), "path", "left_anti")
        .select(
            F.col("path").alias("source_uri"),
            "relative_path",
            F.col("length").alias("size"),
            F.lit(REASON_UNREADABLE).alias("reason"),
            F.lit("Spark could not read the file (permissions, or removed during the ingest)").alias("detail"),
        )
    )
    empty = spark.createDataFrame(
        [(p, relative_to(p, root), 0, REASON_EMPTY, "the file is empty (0 bytes)") for p in empty_paths],
        "source_uri string, relative_path string, size bigint, reason string, detail string",
    )
    bad = analyzed.filter(F.col("reason").isNotNull()).select("source_uri", "relative_path", "size", "reason", "detail")
    quarantined = bad.unionByName(too_large).unionByName(unreadable).unionByName(empty).persist(StorageLevel.MEMORY_AND_DISK)
    good = analyzed.filter(F.col("reason").isNull())

    # Labels.
    if options.labels == "dirname":
        good = good.withColumn("label", F.col("dirname_label"))
    elif options.labels == "none":
        good = good.withColumn("label", F.lit(None).cast("string"))
    else:
        good = good.join(_labels_frame(spark, options.labels), "relative_path", "left").withColumnRenamed("csv_label", "label")

    # Classify against the dataset's current manifests.
    _say(progress, "[3/5] comparing with the lake's manifests")
    existing = (
        lake.dataframe(spark, MANIFESTS)
        .filter((F.col("dataset") == options.dataset) & (F.col("split") == options.split))
        .select(
            "relative_path",
            F.col("content_hash").alias("old_hash"),
            F.input_file_name().alias("manifest_file"),
        )
    )
    classified = (
        good.join(existing, "relative_path", "left")
        .withColumn(
            "change",
            F.when(F.col("old_hash").isNull(), F.lit("new"))
            .when(F.col("old_hash") == F.col("content_hash"), F.lit("unchanged"))
            .otherwise(F.lit("changed")),
        )
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    counts = {
        r["change"]: (r["n"], r["bytes"])
        for r in classified.groupBy("change").agg(F.count("*").alias("n"), F.sum("size").alias("bytes")).collect()
    }
    summary.files_new = counts.get("new", (0, 0))[0]
    summary.files_changed = counts.get("changed", (0, 0))[0]
    summary.files_unchanged = counts.get("unchanged", (0, 0))[0]
    summary.files_ingested = summary.files_new + summary.files_changed
    summary.logical_bytes = int(counts.get("new", (0, 0))[1] or 0) + int(counts.get("changed", (0, 0))[1] or 0)
    to_add = classified.filter(F.col("change") != "unchanged")

    # Chunk plan: ids the lake lacks, each owned by one file of this batch.
    _say(progress, f"[4/5] planning chunks of {summary.files_ingested} new or changed files against the lake")
    refs = to_add.select("source_uri", F.posexplode(F.arrays_zip("chunk_ids", "chunk_sizes")).alias("pos", "c")).select(
        "source_uri", "pos", F.col("c.chunk_ids").alias("id"), F.col("c.chunk_sizes").alias("size")
    )
    lake_ids = lake.dataframe(spark, CHUNKS).select("id")
    owners = (
        refs.groupBy("id")
        .agg(F.min(F.struct("source_uri", "pos")).alias("owner"), F.first("size").alias("size"))
        .join(lake_ids, "id", "left_anti")
    )
    plan = (
        owners.groupBy(F.col("owner.source_uri").alias("path"))
        .agg(F.sort_array(F.collect_list(F.struct(F.col("owner.pos").cast("int").alias("pos"), "id"))).alias("owned"), F.sum("size").alias("bytes"))
        .select("path", F.col("owned.pos").alias("positions"), F.col("owned.id").alias("ids"), "bytes")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    totals = plan.agg(F.count("*").alias("files"), F.sum(F.size("ids")).alias("chunks"), F.sum("bytes").alias("bytes")).first()
    summary.new_chunks = int(totals["chunks"] or 0)
    summary.new_physical_bytes = int(totals["bytes"] or 0)

    _say(
        progress,
        f"[5/5] writing {summary.new_chunks} new chunks ({format_size(summary.new_physical_bytes)}) from "
        f"{totals['files']} files, {summary.files_ingested} manifests, quarantine rows",
    )
    lake.ensure()
    metadata_schema = from_arrow_schema(delta.FILE_METADATA_SCHEMA)
    chunk_files: list[dict] = []
    if summary.new_chunks:
        owning = _list_source(spark, options.source).filter(F.col("length") <= options.max_file_size).select("path", "content")
        chunk_files = [
            r.asDict()
            for r in owning.join(F.broadcast(plan.select("path", "positions", "ids")), "path")
            .mapInArrow(_chunk_emitter(lake.table_uri(CHUNKS), params), metadata_schema)
            .collect()
        ]

    manifest_rows = to_add.select(
        F.lit(options.dataset).alias("dataset"),
        F.lit(options.split).alias("split"),
        "label",
        "relative_path",
        "source_uri",
        "size",
        "content_hash",
        "chunk_ids",
        "chunk_sizes",
        "format",
        "width",
        "height",
        "channels",
        "bit_depth",
        "pages",
        "source_modified_at",
        F.lit(now).alias("ingested_at"),
        F.lit(run_id).alias("ingest_run"),
        F.lit(params.label).alias("chunker"),
    )
    # Changed files: rewrite the manifest files that hold their old rows, without those rows.
    replaced_files = [r["manifest_file"] for r in to_add.filter(F.col("change") == "changed").select("manifest_file").distinct().collect()]
    if replaced_files:
        replaced_keys = to_add.filter(F.col("change") == "changed").select(
            F.lit(options.dataset).alias("dataset"), F.lit(options.split).alias("split"), "relative_path"
        )
        kept = (
            lake.dataframe(spark, MANIFESTS)
            .filter(F.input_file_name().isin(replaced_files))
            .join(replaced_keys, ["dataset", "split", "relative_path"], "left_anti")
        )
        manifest_rows = manifest_rows.unionByName(kept)
    manifest_files: list[dict] = []
    if summary.files_ingested:
        parts = max(1, math.ceil(summary.files_ingested / MANIFEST_ROWS_PER_FILE))
        manifest_files = [
            r.asDict()
            for r in manifest_rows.coalesce(parts)
            .mapInArrow(_table_writer(lake.table_uri(MANIFESTS), MANIFESTS_SCHEMA, WRITE_OPTIONS[MANIFESTS], "manifests"), metadata_schema)
            .collect()
        ]

    old_quarantine = lake.dataframe(spark, QUARANTINE).filter(F.col("dataset") == options.dataset)
    new_quarantine = quarantined.join(
        old_quarantine.select("source_uri", "size", "reason"), ["source_uri", "size", "reason"], "left_anti"
    ).select(
        F.lit(options.dataset).alias("dataset"),
        F.lit(options.split).alias("split"),
        "relative_path",
        "source_uri",
        "size",
        "reason",
        "detail",
        F.lit(now).alias("ingested_at"),
        F.lit(run_id).alias("ingest_run"),
    )
    reasons = {r["reason"]: r["n"] for r in quarantined.groupBy("reason").agg(F.count("*").alias("n")).collect()}
    summary.files_quarantined = sum(reasons.values())
    summary.quarantine_reasons = reasons
    quarantine_files = [
        r.asDict()
        for r in new_quarantine.coalesce(1)
        .mapInArrow(_table_writer(lake.table_uri(QUARANTINE), QUARANTINE_SCHEMA, WRITE_OPTIONS[QUARANTINE], "quarantine"), metadata_schema)
        .collect()
    ]

    summary.quarantine_rows_added = sum(int(m["num_records"]) for m in quarantine_files)

    # Commit: chunks before manifests, so no manifest ever points at a missing chunk.
    meta = {"cnnspark.run": run_id, "cnnspark.dataset": options.dataset, "cnnspark.split": options.split}
    delta.commit(lake.table_uri(CHUNKS), CHUNKS_SCHEMA, chunk_files, operation="ingest", metadata=meta, storage_options=lake.storage_options)
    replaced_relative = [_relative_file(f, lake.table_uri(MANIFESTS)) for f in replaced_files]
    delta.commit(
        lake.table_uri(MANIFESTS), MANIFESTS_SCHEMA, manifest_files, replaced_relative,
        operation="ingest", metadata=meta, storage_options=lake.storage_options,
    )
    delta.commit(lake.table_uri(QUARANTINE), QUARANTINE_SCHEMA, quarantine_files, operation="ingest", metadata=meta, storage_options=lake.storage_options)
    summary.committed_versions = {name: lake.version(name) for name in (CHUNKS, MANIFESTS, QUARANTINE)}

    for frame in (analyzed, quarantined, classified, plan):
        frame.unpersist()
    _lake_totals(spark, lake, summary)
    summary.seconds = round(time.monotonic() - started, 2)
    return summary


def _relative_file(uri: str, table_uri: str) -> str:
    """A data file's path relative to its table root, as the Delta log names it."""
    from urllib.parse import unquote

    path = unquote(_strip_file_scheme(uri))
    root = _strip_file_scheme(table_uri).rstrip("/") + "/"
    if not path.startswith(root):
        raise IntegrityError(f"manifest file {uri} is not inside the table {table_uri}")
    return path[len(root) :]


def _lake_totals(spark: SparkSession, lake: Lake, summary: IngestSummary) -> None:
    """Lake-wide logical and physical bytes from the size columns alone (no chunk bytes read)."""
    from pyspark.sql import functions as F

    summary.lake_logical_bytes = int(lake.dataframe(spark, MANIFESTS).agg(F.sum("size")).first()[0] or 0)
    summary.lake_physical_bytes = int(lake.dataframe(spark, CHUNKS).agg(F.sum("size")).first()[0] or 0)
    summary.lake_dedup_ratio = (
        round(summary.lake_logical_bytes / summary.lake_physical_bytes, 4) if summary.lake_physical_bytes else 0.0
    )
