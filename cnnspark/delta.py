"""Delta tables written the scalable way: tasks write Parquet, the driver commits.

Spark tasks (or any process) write Parquet files straight into a table's folder with
:func:`write_parquet_files` and return each file's metadata; the driver turns those into
``deltalake`` AddActions and commits them in one transaction with :func:`commit`. Readers take
the exact file list of the current snapshot (:func:`snapshot_files`), never a glob of the folder.

Statistics: Delta log stats are written for integer, string and timestamp columns; binary
columns (chunk ids) get none there, which is why the chunks table keeps an int64 ``key``
beside the id. Parquet's own row-group statistics cover every column.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cnnspark.errors import LakeError

# Delta truncates string statistics; we leave out a string column's min/max when longer.
MAX_STRING_STAT = 64

FILE_METADATA_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("modification_time", pa.int64()),
        ("num_records", pa.int64()),
        ("stats", pa.string()),
    ]
)


@dataclass(frozen=True)
class WriteOptions:
    """How a table's Parquet files are cut: compression, row-group and file sizes."""

    compression: str = "zstd"
    compression_level: int | None = None
    row_group_rows: int | None = None  # cap on rows per row group
    row_group_bytes: int | None = None  # cap on (uncompressed) bytes per row group
    file_bytes: int = 128 * 1024 * 1024  # start a new file past this many uncompressed bytes
    sort_by: tuple[str, ...] = ()


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local path or a URI (s3://, gs://, hdfs://, file://)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise LakeError(f"cannot open {uri}: {e}; use a local path or an s3://, gs:// or hdfs:// URI") from e


def _stat_value(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return value


def column_stats(table: pa.Table) -> str:
    """Delta ``stats`` JSON: numRecords and min/max/nullCount of the integer, string, timestamp columns."""
    mins: dict[str, object] = {}
    maxs: dict[str, object] = {}
    nulls: dict[str, int] = {}
    for field in table.schema:
        t = field.type
        if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_timestamp(t)):
            continue
        column = table.column(field.name)
        nulls[field.name] = column.null_count
        if column.null_count == len(column):
            continue
        mm = pc.min_max(column)
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        if pa.types.is_string(t) and max(len(lo), len(hi)) > MAX_STRING_STAT:
            continue
        if pa.types.is_timestamp(t) and t.unit not in ("s", "ms"):
            # Delta stats carry milliseconds; widen so the range still covers every value.
            lo = lo.replace(microsecond=lo.microsecond // 1000 * 1000)
            hi = hi.replace(microsecond=min(999999, (hi.microsecond // 1000 + 1) * 1000 - 1))
        mins[field.name] = _stat_value(lo)
        maxs[field.name] = _stat_value(hi)
    return json.dumps({"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})


def _row_group_rows(table: pa.Table, options: WriteOptions) -> int:
    rows = options.row_group_rows or max(1, table.num_rows)
    if options.row_group_bytes and table.num_rows:
        per_row = max(1, table.nbytes // table.num_rows)
        rows = min(rows, max(1, options.row_group_bytes // per_row))
    return rows


def write_parquet_files(
    table_uri: str,
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    options: WriteOptions,
    *,
    prefix: str = "part",
    name_of: Callable[[pa.Table], str] | None = None,
) -> Iterator[dict]:
    """Write ``batches`` into Parquet files inside ``table_uri``; yield each file's metadata.

    Rows are gathered until ``options.file_bytes``, sorted by ``options.sort_by`` and written as
    one file. Returned paths are relative to the table root, ready for :func:`add_action`.
    Files are named ``{prefix}-{uuid}``, or ``{prefix}-{name_of(table)}`` when given (a name
    derived from the content makes a recomputed Spark task rewrite the same file).
    """
    fs, root = filesystem(table_uri)
    fs.create_dir(root, recursive=True)  # no-op on object stores and for existing folders
    pending: list[pa.RecordBatch] = []
    pending_bytes = 0

    def flush() -> dict:
        table = pa.Table.from_batches(pending, schema=schema)
        if options.sort_by:
            table = table.sort_by([(c, "ascending") for c in options.sort_by])
        suffix = name_of(table) if name_of else uuid.uuid4().hex
        name = f"{prefix}-{suffix}.{options.compression}.parquet"
        path = f"{root.rstrip('/')}/{name}"
        with fs.open_output_stream(path) as sink:
            pq.write_table(
                table,
                sink,
                row_group_size=_row_group_rows(table, options),
                compression=options.compression,
                compression_level=options.compression_level,
                write_statistics=True,
            )
        info = fs.get_file_info(path)
        mtime = int(info.mtime.timestamp() * 1000) if info.mtime else int(time.time() * 1000)
        return {
            "path": name,
            "size": info.size,
            "modification_time": mtime,
            "num_records": table.num_rows,
            "stats": column_stats(table),
        }

    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        pending_bytes += batch.nbytes
        if pending_bytes >= options.file_bytes:
            yield flush()
            pending, pending_bytes = [], 0
    if pending:
        yield flush()


def add_action(meta: dict):
    from deltalake.transaction import AddAction

    return AddAction(
        path=meta["path"],
        size=int(meta["size"]),
        partition_values={},
        modification_time=int(meta["modification_time"]),
        data_change=True,
        stats=meta["stats"],
    )


def remove_action(path: str, size: int | None = None):
    from deltalake.transaction import RemoveAction

    return RemoveAction(path=path, data_change=True, deletion_timestamp=int(time.time() * 1000), size=size)


def table_exists(table_uri: str, storage_options: dict | None = None) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(table_uri, storage_options=storage_options)


def commit(
    table_uri: str,
    schema: pa.Schema,
    added: list[dict],
    removed: list[str] = (),
    *,
    operation: str,
    metadata: dict | None = None,
    storage_options: dict | None = None,
) -> bool:
    """Commit written files (and removals) as one Delta transaction; create the table if needed.

    Returns False (and commits nothing) when there is nothing to add or remove.
    """
    from deltalake import DeltaTable, Schema
    from deltalake.transaction import CommitProperties, create_table_with_add_actions

    if not added and not removed:
        return False
    props = CommitProperties(custom_metadata={"cnnspark.operation": operation, **(metadata or {})})
    actions = [add_action(m) for m in added]
    if not table_exists(table_uri, storage_options):
        if removed:
            raise LakeError(f"cannot remove files from {table_uri}: the table does not exist")
        create_table_with_add_actions(
            table_uri,
            Schema.from_arrow(schema),
            actions,
            mode="append",
            storage_options=storage_options,
            commit_properties=props,
        )
        return True
    table = DeltaTable(table_uri, storage_options=storage_options)
    table.create_write_transaction(
        actions + [remove_action(p) for p in removed],
        mode="append",
        schema=schema,
        commit_properties=props,
    )
    return True


def ensure_table(table_uri: str, schema: pa.Schema, storage_options: dict | None = None) -> None:
    """Create an empty table with ``schema`` if none exists, so readers always find one."""
    from deltalake import Schema
    from deltalake.transaction import create_table_with_add_actions

    if not table_exists(table_uri, storage_options):
        create_table_with_add_actions(
            table_uri, Schema.from_arrow(schema), [], mode="ignore", storage_options=storage_options
        )


def snapshot_files(table_uri: str, storage_options: dict | None = None) -> list[str]:
    """URIs of the data files in the table's current snapshot ([] if the table does not exist)."""
    from deltalake import DeltaTable

    if not table_exists(table_uri, storage_options):
        return []
    return list(DeltaTable(table_uri, storage_options=storage_options).file_uris())


def file_stats(table_uri: str, storage_options: dict | None = None) -> pa.Table:
    """One row per current file: path, size_bytes, num_records and flattened min/max stats."""
    from deltalake import DeltaTable

    return pa.table(DeltaTable(table_uri, storage_options=storage_options).get_add_actions(flatten=True))


def read_table(
    table_uri: str,
    schema: pa.Schema,
    columns: list[str] | None = None,
    filter: pc.Expression | None = None,
    *,
    files: list[str] | None = None,
    storage_options: dict | None = None,
) -> pa.Table:
    """Read the current snapshot into Arrow through ``pyarrow.dataset`` over its exact file list."""
    files = snapshot_files(table_uri, storage_options) if files is None else files
    if not files:
        empty = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        return empty.empty_table()
    fs, _ = filesystem(files[0])
    paths = [filesystem(f)[1] for f in files]
    dataset = pads.dataset(paths, schema=schema, format="parquet", filesystem=fs)
    return dataset.to_table(columns=columns, filter=filter)
