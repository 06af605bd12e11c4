"""The ingest job: chunk and hash source images in Spark tasks into a lake's Delta tables.

Plan (every step runs in Spark; only file metadata and small aggregates reach the driver):

1. List SOURCE with ``binaryFile`` (content pruned). Zero-byte files, which Spark's file index
   drops, are listed with pyarrow; files over ``max_file_size`` go to quarantine as ``too_large``.
2. One read of every file, in tasks: sniff format and header, cut with FastCDC, hash the chunks
   and the whole file. Files whose content the lake already holds (by content hash, broadcast)
   stop there. For the others, the task writes the chunks it has not seen yet, sorted by key,
   into uncommitted *staged* Parquet files in the chunks folder. Bad files become quarantine
   rows; files Spark could not read become ``unreadable``.
3. Classify against the dataset's current manifests: new, changed (same path, new content) or
   unchanged (nothing written).
4. Settle the staged chunks in Spark: a chunk is kept if the lake lacks its id (an anti-join
   over the ``id`` column only) and it is the first staged copy of that id in the batch. Staged
   files are committed as they are, trimmed by a task, or deleted.
5. Tasks write the manifests (changed files replace their old rows copy-on-write) and the new
   quarantine rows. The driver commits one Delta transaction per table: chunks first, then
   manifests, then quarantine, so a manifest never points at a missing chunk. Staged files of a
   failed run are deleted; none is ever visible to readers, since only commits publish files.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import xxhash

from cnnspark import delta
from cnnspark.chunking import ChunkingParams, chunk_id, chunk_key, content_hash, cut_points
from cnnspark.errors import ConfigError, IntegrityError, SourceError
from cnnspark.formats import REASON_EMPTY, InvalidImage, inspect_image
from cnnspark.lake import Lake, spark_path
from cnnspark.sizes import GiB, MiB, format_size
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
# value, which the JVM copies a few times on its way to Python: with the local 4 GiB driver a
# 245 MiB file ingests and a 480 MiB file runs out of Java heap. Larger files go to quarantine
# as too_large; Spark/Arrow cap one binary value at 2 GiB whatever the memory.
DEFAULT_MAX_FILE_SIZE = 256 * MiB
HARD_MAX_FILE_SIZE = 2 * GiB - 1
# Files per Arrow batch between the JVM and Python workers: bounds a worker's memory to about
# this many files' bytes.
DEFAULT_FILES_PER_BATCH = 16
# Manifest rows per output file when the manifests of a run are written.
MANIFEST_ROWS_PER_FILE = 200_000

REASON_TOO_LARGE = "too_large"
REASON_UNREADABLE = "unreadable"
BAD = "bad:"  # prefix of a quarantined file's class in the classification step
IRREGULAR = "irregular"  # listed but not analysed: too large or unreadable
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
        ("staged_ids", pa.list_(pa.binary())),  # chunks this file put into a staged file
        ("staged_file", pa.string()),  # that staged file's name in the chunks folder
        ("staged_meta", pa.string()),  # its metadata (JSON of delta.write_parquet_files output)
    ]
)


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


def analyze_file(data: bytes, cdc) -> tuple[dict, list[tuple[bytes, memoryview]]]:
    """Header facts, content hash and chunk ids/sizes of one file (or a quarantine reason),
    and the file's (chunk id, chunk bytes) pieces."""
    try:
        info = inspect_image(data)
    except InvalidImage as e:
        return {"reason": e.reason, "detail": str(e)}, []
    view = memoryview(data)
    pieces = [(chunk_id(view[o : o + n]), view[o : o + n]) for o, n in cut_points(view, cdc)]
    row = {
        "reason": None,
        "detail": None,
        "content_hash": content_hash(view),
        "chunk_ids": [cid for cid, _ in pieces],
        "chunk_sizes": [len(p) for _, p in pieces],
        "format": info.format,
        "width": info.width,
        "height": info.height,
        "channels": info.channels,
        "bit_depth": info.bit_depth,
        "pages": info.pages,
    }
    return row, pieces


class _KnownHashes:
    """Content hashes the lake already holds, as a sorted fixed-width array (16 bytes each)."""

    def __init__(self, hashes: list[bytes]) -> None:
        self.sorted = np.sort(np.array([bytes(h) for h in hashes], dtype="S16"))

    def __contains__(self, h: bytes) -> bool:
        needle = np.array([bytes(h)], dtype="S16")
        i = int(np.searchsorted(self.sorted, needle)[0])
        return i < len(self.sorted) and bool(self.sorted[i] == needle[0])


def _analyzer(
    root: str, params: ChunkingParams, chunks_uri: str, staging_prefix: str, known
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The single read of every file: analyse it and stage its chunks.

    Chunks of files whose content the lake does not already hold are written, deduplicated
    within the task and sorted by key, into uncommitted "staged" files in the chunks folder.
    Each output row names the staged file holding the chunks the file contributed
    (``staged_ids``); the driver later commits, trims or drops each staged file.
    """

    def analyze(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        cdc = params.chunker()
        known_hashes = known.value
        options = WRITE_OPTIONS[CHUNKS]
        seen: set[bytes] = set()
        held_rows: list[dict] = []
        ids, keys, sizes, datas = [], [], [], []
        staged_bytes = 0

        def flush() -> pa.RecordBatch:
            nonlocal ids, keys, sizes, datas, staged_bytes, held_rows
            staged = None
            if ids:
                batch = pa.RecordBatch.from_arrays(
                    [pa.array(ids, pa.binary()), pa.array(keys, pa.int64()), pa.array(sizes, pa.int32()), pa.array(datas, pa.binary())],
                    schema=CHUNKS_SCHEMA,
                )
                (staged,) = delta.write_parquet_files(
                    chunks_uri, CHUNKS_SCHEMA, [batch], options, prefix=staging_prefix, name_of=_ids_digest
                )
                staged["payload_bytes"] = staged_bytes
            for row in held_rows:
                if row.get("staged_ids"):
                    row["staged_file"] = staged["path"]
                    row["staged_meta"] = json.dumps(staged)
            out = pa.RecordBatch.from_pylist(held_rows, schema=ANALYZED_SCHEMA)
            ids, keys, sizes, datas, held_rows, staged_bytes = [], [], [], [], [], 0
            return out

        for batch in batches:
            cols = batch.to_pydict()
            for path, length, mtime, content in zip(
                cols["path"], cols["length"], cols["modificationTime"], cols["content"], strict=True
            ):
                rel = relative_to(path, root)
                facts, pieces = analyze_file(content, cdc)
                row = {"source_uri": path, "relative_path": rel, "size": length, "source_modified_at": mtime,
                       "dirname_label": dirname_label(rel), **facts}
                if pieces and row["content_hash"] not in known_hashes:
                    contributed = []
                    for cid, piece in pieces:
                        if cid not in seen:
                            seen.add(cid)
                            contributed.append(cid)
                            ids.append(cid)
                            keys.append(chunk_key(cid))
                            sizes.append(len(piece))
                            datas.append(bytes(piece))
                            staged_bytes += len(piece)
                    row["staged_ids"] = contributed
                held_rows.append(row)
            if staged_bytes >= options.file_bytes:
                yield flush()
        if held_rows:
            yield flush()

    return analyze


def _ids_digest(table: pa.Table) -> str:
    """A name for a chunk file from the ids it holds: the same chunks give the same name."""
    h = xxhash.xxh3_128()
    for cid in table.column("id").to_pylist():
        h.update(cid)
    return h.hexdigest()


SETTLED_SCHEMA = pa.schema([*delta.FILE_METADATA_SCHEMA, pa.field("payload_bytes", pa.int64())])


def _settler(chunks_uri: str, prefix: str) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """For each staged file: pass it on whole, rewrite it with only its assigned ids, or drop it."""

    def settle(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        fs, root = delta.filesystem(chunks_uri)
        for batch in batches:
            for row in batch.to_pylist():
                meta = json.loads(row["staged_meta"])
                if row["kept"] == 0:
                    continue
                if row["kept"] == meta["num_records"]:
                    out = [meta]
                    payload = meta["payload_bytes"]
                else:
                    with fs.open_input_file(f"{root.rstrip('/')}/{row['staged_file']}") as f:
                        table = pq.read_table(f, schema=CHUNKS_SCHEMA)
                    kept = table.filter(pc.is_in(table.column("id"), value_set=pa.array(row["ids"], pa.binary())))
                    payload = pc.sum(kept.column("size")).as_py() or 0
                    out = list(
                        delta.write_parquet_files(chunks_uri, CHUNKS_SCHEMA, kept.to_batches(), WRITE_OPTIONS[CHUNKS], prefix=prefix, name_of=_ids_digest)
                    )
                for i, m in enumerate(out):
                    record = {k: m[k] for k in delta.FILE_METADATA_SCHEMA.names}
                    yield pa.RecordBatch.from_pylist([{**record, "payload_bytes": payload if i == 0 else 0}], schema=SETTLED_SCHEMA)

    return settle


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
    started = time.monotonic()
    lake = Lake(options.lake, storage_options=options.storage_options)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    summary = IngestSummary(lake=lake.uri, dataset=options.dataset, split=options.split, run_id=run_id)
    previous_batch = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", None)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(options.files_per_batch))
    staging_prefix = f"chunks-{run_id}-staged"
    committed = False
    try:
        _run(spark, options, lake, run_id, staging_prefix, summary, progress)
        committed = True
    finally:
        if previous_batch is None:
            spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
        else:
            spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous_batch)
        _remove_staged(lake, staging_prefix, keep_committed=committed)
    summary.seconds = round(time.monotonic() - started, 2)
    return summary


def _run(spark, options: IngestOptions, lake: Lake, run_id: str, staging_prefix: str, summary: IngestSummary, progress) -> None:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    now = datetime.now(timezone.utc).replace(microsecond=0)
    root = source_root(options.source)
    params = options.chunking
    metadata_schema = from_arrow_schema(delta.FILE_METADATA_SCHEMA)

    # 1. List once: the file index built here serves both the listing (content pruned) and the read.
    _say(progress, f"[1/5] listing {options.source}")
    source = _list_source(spark, options.source)
    listing = source.select("path", "length")
    empty_paths = zero_byte_files(options.source)

    # 2. The one read of every file: analyse it and stage the chunks the lake may lack.
    _say(progress, f"[2/5] reading files under {options.source}: format, header, FastCDC chunks ({params.label}), XXH3-128 hashes")
    lake_manifests = lake.dataframe(spark, MANIFESTS)
    hashes = [r[0] for r in lake_manifests.select("content_hash").distinct().collect()] if lake.files(MANIFESTS) else []
    known = spark.sparkContext.broadcast(_KnownHashes(hashes))
    scan = source.filter(F.col("length") <= options.max_file_size)
    analyzer = _analyzer(root, params, lake.table_uri(CHUNKS), staging_prefix, known)
    analyzed = scan.mapInArrow(analyzer, from_arrow_schema(ANALYZED_SCHEMA)).persist(StorageLevel.MEMORY_AND_DISK)

    labelled = analyzed
    if options.labels == "dirname":
        labelled = labelled.withColumn("label", F.col("dirname_label"))
    elif options.labels == "none":
        labelled = labelled.withColumn("label", F.lit(None).cast("string"))
    else:
        labelled = labelled.join(_labels_frame(spark, options.labels), "relative_path", "left").withColumnRenamed("csv_label", "label")
    existing = lake_manifests.filter((F.col("dataset") == options.dataset) & (F.col("split") == options.split)).select(
        "relative_path", F.col("content_hash").alias("old_hash"), F.input_file_name().alias("manifest_file")
    )
    # Every listed file, joined with its analysis: none means too large or unreadable.
    classified = (
        listing.join(labelled.withColumnRenamed("source_uri", "path"), "path", "left")
        .withColumnRenamed("path", "source_uri")
        .join(existing, "relative_path", "left")
        .withColumn(
            "change",
            F.when(F.col("size").isNull(), F.lit(IRREGULAR))
            .when(F.col("reason").isNotNull(), F.concat(F.lit(BAD), F.col("reason")))
            .when(F.col("old_hash").isNull(), F.lit("new"))
            .when(F.col("old_hash") == F.col("content_hash"), F.lit("unchanged"))
            .otherwise(F.lit("changed")),
        )
        .persist(StorageLevel.MEMORY_AND_DISK)
    )

    # 3. Classify against the dataset's manifests (this job runs the read).
    counts = {
        r["change"]: (r["n"], int(r["bytes"] or 0))
        for r in classified.groupBy("change").agg(F.count("*").alias("n"), F.sum("size").alias("bytes")).collect()
    }
    _say(progress, "[3/5] compared with the lake: " + ", ".join(f"{n} {k}" for k, (n, _) in sorted(counts.items())))
    summary.files_new, new_bytes = counts.get("new", (0, 0))
    summary.files_changed, changed_bytes = counts.get("changed", (0, 0))
    summary.files_unchanged = counts.get("unchanged", (0, 0))[0]
    summary.files_ingested = summary.files_new + summary.files_changed
    summary.logical_bytes = new_bytes + changed_bytes
    bad_reasons = {k[len(BAD) :]: n for k, (n, _) in counts.items() if k.startswith(BAD)}
    listed_files = sum(n for n, _ in counts.values())
    if listed_files == 0 and not empty_paths:
        raise SourceError(f"no files found under {options.source}; check the path (names starting with . or _ are skipped)")

    # 4. Chunks: keep each staged chunk the lake lacks exactly once.
    _say(progress, "[4/5] deduplicating staged chunks against the batch and the lake")
    chunk_files = _settle_staged(spark, lake, analyzed, staging_prefix, summary)

    # 5. Manifests (changed files replace their old rows copy-on-write) and quarantine.
    _say(progress, f"[5/5] writing {summary.files_ingested} manifests and the quarantine")
    to_add = classified.filter(F.col("change").isin("new", "changed"))
    manifest_rows = to_add.select(
        F.lit(options.dataset).alias("dataset"), F.lit(options.split).alias("split"), "label", "relative_path",
        "source_uri", "size", "content_hash", "chunk_ids", "chunk_sizes", "format", "width", "height", "channels",
        "bit_depth", "pages", "source_modified_at", F.lit(now).alias("ingested_at"), F.lit(run_id).alias("ingest_run"),
        F.lit(params.label).alias("chunker"),
    )
    replaced_files: list[str] = []
    if summary.files_changed:
        changed = to_add.filter(F.col("change") == "changed")
        replaced_files = [r[0] for r in changed.select("manifest_file").distinct().collect()]
        kept = (
            lake.dataframe(spark, MANIFESTS)
            .filter(F.input_file_name().isin(replaced_files))
            .join(
                changed.select(F.lit(options.dataset).alias("dataset"), F.lit(options.split).alias("split"), "relative_path"),
                ["dataset", "split", "relative_path"],
                "left_anti",
            )
        )
        manifest_rows = manifest_rows.unionByName(kept)
    manifest_files: list[dict] = []
    if summary.files_ingested:
        parts = max(1, math.ceil(summary.files_ingested / MANIFEST_ROWS_PER_FILE))
        writer = _table_writer(lake.table_uri(MANIFESTS), MANIFESTS_SCHEMA, WRITE_OPTIONS[MANIFESTS], "manifests")
        manifest_files = [r.asDict() for r in manifest_rows.coalesce(parts).mapInArrow(writer, metadata_schema).collect()]

    irregular = classified.filter(F.col("change") == IRREGULAR).select("source_uri", "length").collect() if IRREGULAR in counts else []
    quarantine_files = _write_quarantine(
        spark, options, lake, analyzed, bad_reasons, irregular, empty_paths, root, now, run_id, summary, metadata_schema
    )
    summary.files_seen = listed_files + len(empty_paths)

    # Commit: chunks before manifests, so no manifest ever points at a missing chunk.
    lake.ensure()
    meta = {"cnnspark.run": run_id, "cnnspark.dataset": options.dataset, "cnnspark.split": options.split}
    so = lake.storage_options
    delta.commit(lake.table_uri(CHUNKS), CHUNKS_SCHEMA, chunk_files, operation="ingest", metadata=meta, storage_options=so)
    replaced = [_relative_file(f, lake.table_uri(MANIFESTS)) for f in replaced_files]
    delta.commit(lake.table_uri(MANIFESTS), MANIFESTS_SCHEMA, manifest_files, replaced, operation="ingest", metadata=meta, storage_options=so)
    delta.commit(lake.table_uri(QUARANTINE), QUARANTINE_SCHEMA, quarantine_files, operation="ingest", metadata=meta, storage_options=so)
    summary.committed_versions = {name: lake.version(name) for name in (CHUNKS, MANIFESTS, QUARANTINE)}
    for frame in (analyzed, classified):
        frame.unpersist()
    known.unpersist()
    _lake_totals(spark, lake, summary)


def _settle_staged(spark, lake: Lake, analyzed, staging_prefix: str, summary: IngestSummary) -> list[dict]:
    """Decide each staged chunk file's fate, in one Spark job: commit it whole, trim it, or drop it.

    A staged chunk is kept when the lake lacks its id and it is the first staged copy of that id
    (staged files ordered by name); the others are duplicates across tasks or of the lake.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    staged = analyzed.select("staged_file", F.explode("staged_ids").alias("id")).filter(F.col("staged_file").isNotNull())
    wanted = staged.join(lake.dataframe(spark, CHUNKS).select("id"), "id", "left_anti")
    assigned = wanted.groupBy("id").agg(F.min("staged_file").alias("staged_file"))
    kept = assigned.groupBy("staged_file").agg(F.count("*").alias("kept"), F.collect_list("id").alias("ids"))
    files = (
        analyzed.filter(F.col("staged_file").isNotNull()).select("staged_file", "staged_meta").distinct()
        .join(kept, "staged_file", "left")
        .select("staged_file", "staged_meta", F.coalesce("kept", F.lit(0)).alias("kept"), "ids")
        .mapInArrow(_settler(lake.table_uri(CHUNKS), f"{staging_prefix}-trimmed"), from_arrow_schema(SETTLED_SCHEMA))
        .collect()
    )
    summary.new_chunks = sum(int(r["num_records"]) for r in files)
    summary.new_physical_bytes = sum(int(r["payload_bytes"]) for r in files)
    return [{k: r[k] for k in delta.FILE_METADATA_SCHEMA.names} for r in files]


def _remove_staged(lake: Lake, staging_prefix: str, *, keep_committed: bool) -> None:
    """Delete staged chunk files the run did not commit (all of them if the run failed)."""
    import pyarrow.fs as pafs

    fs, root = delta.filesystem(lake.table_uri(CHUNKS))
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return
    committed = {f.rsplit("/", 1)[-1] for f in lake.files(CHUNKS)} if keep_committed else set()
    for info in infos:
        name = info.base_name
        if name.startswith(staging_prefix) and name not in committed:
            fs.delete_file(info.path)


def _write_quarantine(
    spark, options, lake, analyzed, bad_reasons, irregular, empty_paths, root, now, run_id, summary, metadata_schema
) -> list[dict]:
    """Quarantine rows: bad content, zero bytes, too large, or unreadable; new ones only."""
    from pyspark.sql import functions as F

    schema = "source_uri string, relative_path string, size bigint, reason string, detail string"
    rows = [(p, relative_to(p, root), 0, REASON_EMPTY, "the file is empty (0 bytes)") for p in empty_paths]
    for r in irregular:  # listed but not analysed: over the size limit, or skipped by Spark
        if r["length"] > options.max_file_size:
            reason = REASON_TOO_LARGE
            detail = (
                f"file is {r['length']} bytes, over the {options.max_file_size}-byte limit; to ingest it, raise "
                "--max-file-size together with executor (local: driver) memory, about 10x the file size, "
                "and use --files-per-batch 1"
            )
        else:
            reason, detail = REASON_UNREADABLE, "Spark could not read the file (permissions, or removed during the ingest)"
        rows.append((r["source_uri"], relative_to(r["source_uri"], root), r["length"], reason, detail))
    reasons = dict(bad_reasons)
    for row in rows:
        reasons[row[3]] = reasons.get(row[3], 0) + 1
    summary.files_quarantined = sum(reasons.values())
    summary.quarantine_reasons = reasons
    if not reasons:
        return []
    bad = analyzed.filter(F.col("reason").isNotNull()).select("source_uri", "relative_path", "size", "reason", "detail")
    quarantined = bad.unionByName(spark.createDataFrame(rows, schema))
    old = lake.dataframe(spark, QUARANTINE).filter(F.col("dataset") == options.dataset).select("source_uri", "size", "reason")
    new_rows = quarantined.join(old, ["source_uri", "size", "reason"], "left_anti").select(
        F.lit(options.dataset).alias("dataset"), F.lit(options.split).alias("split"), "relative_path", "source_uri",
        "size", "reason", "detail", F.lit(now).alias("ingested_at"), F.lit(run_id).alias("ingest_run"),
    )
    writer = _table_writer(lake.table_uri(QUARANTINE), QUARANTINE_SCHEMA, WRITE_OPTIONS[QUARANTINE], "quarantine")
    files = [r.asDict() for r in new_rows.coalesce(1).mapInArrow(writer, metadata_schema).collect()]
    summary.quarantine_rows_added = sum(int(m["num_records"]) for m in files)
    return files


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

    logical = lake.dataframe(spark, MANIFESTS).agg(F.sum("size").alias("logical"))
    physical = lake.dataframe(spark, CHUNKS).agg(F.sum("size").alias("physical"))
    row = logical.crossJoin(physical).first()
    summary.lake_logical_bytes = int(row["logical"] or 0)
    summary.lake_physical_bytes = int(row["physical"] or 0)
    summary.lake_dedup_ratio = (
        round(summary.lake_logical_bytes / summary.lake_physical_bytes, 4) if summary.lake_physical_bytes else 0.0
    )
