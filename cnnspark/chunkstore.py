"""Chunk lookups by id that read little: Delta log statistics pick the files whose key range can
hold the ids, and Parquet row-group statistics on ``key`` pick the row groups inside them.

Chunk files are sorted by ``key`` (the first 8 bytes of the id as int64), so a batch of ids
touches about one row group per id, never a full scan of the chunks table.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from cnnspark import delta
from cnnspark.chunking import chunk_key
from cnnspark.lake import Lake
from cnnspark.tables import CHUNKS, CHUNKS_SCHEMA


def candidate_files(lake: Lake, keys: list[int]) -> list[str]:
    """Current chunk files whose [min.key, max.key] range holds at least one of ``keys``."""
    table_uri = lake.table_uri(CHUNKS)
    if not keys or not delta.table_exists(table_uri, lake.storage_options):
        return []
    stats = delta.file_stats(table_uri, lake.storage_options)
    if stats.num_rows == 0:
        return []
    sorted_keys = pa.array(sorted(keys), pa.int64())
    lo = stats.column("min.key").to_pylist() if "min.key" in stats.column_names else [None] * stats.num_rows
    hi = stats.column("max.key").to_pylist() if "max.key" in stats.column_names else [None] * stats.num_rows
    files = []
    import bisect

    keys_py = sorted_keys.to_pylist()
    for path, a, b in zip(stats.column("path").to_pylist(), lo, hi, strict=True):
        if a is None or b is None:
            files.append(path)  # no statistics: must look inside
            continue
        i = bisect.bisect_left(keys_py, a)
        if i < len(keys_py) and keys_py[i] <= b:
            files.append(path)
    root = table_uri.rstrip("/")
    return [f"{root}/{p}" for p in files]


def read_chunks(lake: Lake, ids: Iterable[bytes], columns: tuple[str, ...] = ("id", "data")) -> pa.Table:
    """Rows of the chunks table for ``ids`` (those that exist), reading only matching row groups."""
    wanted = set(ids)
    if not wanted:
        return CHUNKS_SCHEMA.empty_table().select(list(columns))
    keys = sorted({chunk_key(i) for i in wanted})
    files = candidate_files(lake, keys)
    if not files:
        return CHUNKS_SCHEMA.empty_table().select(list(columns))
    fs, _ = delta.filesystem(files[0])
    dataset = pads.dataset([delta.filesystem(f)[1] for f in files], schema=CHUNKS_SCHEMA, format="parquet", filesystem=fs)
    cols = list(dict.fromkeys(["id", *columns]))
    table = dataset.to_table(columns=cols, filter=pc.field("key").isin(keys))
    mask = pc.is_in(table.column("id"), value_set=pa.array(list(wanted), pa.binary()))
    table = table.filter(mask)
    return table.select(list(columns))


def existing_ids(lake: Lake, ids: Iterable[bytes]) -> set[bytes]:
    """The subset of ``ids`` the lake already stores."""
    return set(read_chunks(lake, ids, columns=("id",)).column("id").to_pylist())


def fetch(lake: Lake, ids: Iterable[bytes]) -> dict[bytes, bytes]:
    """Chunk bytes by id (duplicates of an id, from concurrent ingests, are identical)."""
    table = read_chunks(lake, ids)
    return dict(zip(table.column("id").to_pylist(), table.column("data").to_pylist(), strict=True))


def rebuild(manifest: dict, chunks: dict[bytes, bytes]) -> bytes:
    """Join a manifest's chunks back into the file's bytes; raises LakeError if one is missing."""
    from cnnspark.errors import LakeError

    missing = [i.hex() for i in manifest["chunk_ids"] if i not in chunks]
    if missing:
        raise LakeError(
            f"{manifest['dataset']}/{manifest['relative_path']}: {len(missing)} chunk(s) missing from the chunks "
            f"table, first {missing[0]}; run `cnnspark verify --lake LAKE` to see all affected files"
        )
    return b"".join(chunks[i] for i in manifest["chunk_ids"])
