"""The lake's three Delta tables: their schemas and how their Parquet files are cut.

``chunks``      one row per unique chunk: ``id`` (XXH3-128, 16 bytes), ``key`` (first 8 bytes of
                the id as a signed big-endian int64, so Delta statistics can prune files), ``size``
                and ``data``. Files are sorted by key; row groups are small so a lookup of one id
                reads about one row group.
``manifests``   one row per ingested file: where it came from, what it is, and the ordered chunk
                ids (with sizes) that rebuild it byte for byte.
``quarantine``  one row per file that could not be ingested, with a reason code and words.
"""

from __future__ import annotations

import pyarrow as pa

from cnnspark.delta import WriteOptions
from cnnspark.sizes import MiB

CHUNKS = "chunks"
MANIFESTS = "manifests"
QUARANTINE = "quarantine"
TABLES = (CHUNKS, MANIFESTS, QUARANTINE)

UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")

CHUNKS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.binary(), nullable=False),
        pa.field("key", pa.int64(), nullable=False),
        pa.field("size", pa.int32(), nullable=False),
        pa.field("data", pa.binary(), nullable=False),
    ]
)

MANIFESTS_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("relative_path", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("content_hash", pa.binary(), nullable=False),
        pa.field("chunk_ids", pa.list_(pa.binary()), nullable=False),
        pa.field("chunk_sizes", pa.list_(pa.int32()), nullable=False),
        pa.field("format", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("channels", pa.int32()),
        pa.field("bit_depth", pa.int32()),
        pa.field("pages", pa.int32()),
        pa.field("source_modified_at", UTC_TIMESTAMP),
        pa.field("ingested_at", UTC_TIMESTAMP, nullable=False),
        pa.field("ingest_run", pa.string(), nullable=False),
        pa.field("chunker", pa.string(), nullable=False),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("relative_path", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("ingested_at", UTC_TIMESTAMP, nullable=False),
        pa.field("ingest_run", pa.string(), nullable=False),
    ]
)

SCHEMAS = {CHUNKS: CHUNKS_SCHEMA, MANIFESTS: MANIFESTS_SCHEMA, QUARANTINE: QUARANTINE_SCHEMA}

# Row groups: chunks ~1 MiB so one lookup reads ~1 MiB; manifests small enough that Petastorm
# can give every shard row groups even on a small dataset.
WRITE_OPTIONS = {
    CHUNKS: WriteOptions(
        compression="zstd", compression_level=1, row_group_bytes=1 * MiB, file_bytes=128 * MiB, sort_by=("key", "id")
    ),
    MANIFESTS: WriteOptions(compression="zstd", row_group_rows=64, file_bytes=64 * MiB, sort_by=("dataset", "split", "relative_path")),
    QUARANTINE: WriteOptions(compression="zstd", row_group_rows=10_000, file_bytes=64 * MiB),
}
