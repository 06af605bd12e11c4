"""Put bytes into a lake without Spark: for artifacts (checkpoints, feature maps) written by one
process. Same chunking, same tables, same dedup as the Spark ingest; meant for a few files at a
time, not for datasets (use ``cnnspark ingest`` for those)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from cnnspark import chunkstore, delta
from cnnspark.chunking import ChunkingParams, chunk_key, content_hash, split
from cnnspark.lake import Lake
from cnnspark.tables import CHUNKS, CHUNKS_SCHEMA, MANIFESTS, MANIFESTS_SCHEMA, WRITE_OPTIONS


@dataclass(frozen=True)
class PutResult:
    files: int
    logical_bytes: int
    new_chunks: int
    new_bytes: int


def put_bytes(
    lake: Lake,
    dataset: str,
    items: Mapping[str, bytes],
    *,
    split_name: str = "artifacts",
    label: str | None = None,
    format: str = "binary",
    chunking: ChunkingParams = ChunkingParams(),
    uri_prefix: str = "cnnspark://",
) -> PutResult:
    """Store ``items`` (relative path -> bytes) as manifests of ``dataset``; new chunks only.

    A path already in the dataset with the same content is left alone; with other content its
    manifest row is replaced. Chunks are committed before manifests, as in ingest.
    """
    import pyarrow.compute as pc

    cdc = chunking.chunker()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    run_id = now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    rows, new_chunks = [], {}
    for rel, data in items.items():
        pieces = split(data, cdc)
        rows.append(
            {
                "dataset": dataset, "split": split_name, "label": label, "relative_path": rel,
                "source_uri": f"{uri_prefix}{dataset}/{rel}", "size": len(data),
                "content_hash": content_hash(data), "chunk_ids": [i for i, _ in pieces],
                "chunk_sizes": [len(p) for _, p in pieces], "format": format,
                "width": None, "height": None, "channels": None, "bit_depth": None, "pages": None,
                "source_modified_at": now, "ingested_at": now, "ingest_run": run_id, "chunker": chunking.label,
            }
        )
        for cid, piece in pieces:
            new_chunks.setdefault(cid, piece)
    lake.ensure()
    present = chunkstore.existing_ids(lake, new_chunks)
    fresh = {k: bytes(v) for k, v in new_chunks.items() if k not in present}

    # Existing manifests of these paths: unchanged ones are skipped, changed ones replaced.
    current = lake.arrow(
        MANIFESTS, columns=["relative_path", "content_hash"],
        filter=(pc.field("dataset") == dataset) & (pc.field("split") == split_name),
    )
    old = dict(zip(current.column("relative_path").to_pylist(), current.column("content_hash").to_pylist(), strict=True))
    rows = [r for r in rows if old.get(r["relative_path"]) != r["content_hash"]]
    replaced = {r["relative_path"] for r in rows if r["relative_path"] in old}

    chunk_batch = pa.RecordBatch.from_arrays(
        [
            pa.array(list(fresh), pa.binary()),
            pa.array([chunk_key(k) for k in fresh], pa.int64()),
            pa.array([len(v) for v in fresh.values()], pa.int32()),
            pa.array(list(fresh.values()), pa.binary()),
        ],
        schema=CHUNKS_SCHEMA,
    )
    chunk_files = list(delta.write_parquet_files(lake.table_uri(CHUNKS), CHUNKS_SCHEMA, [chunk_batch], WRITE_OPTIONS[CHUNKS], prefix="chunks"))
    removed, kept = _rows_to_rewrite(lake, dataset, split_name, replaced)
    manifest_batches = [pa.RecordBatch.from_pylist(rows, schema=MANIFESTS_SCHEMA)] + kept
    manifest_files = list(
        delta.write_parquet_files(lake.table_uri(MANIFESTS), MANIFESTS_SCHEMA, manifest_batches, WRITE_OPTIONS[MANIFESTS], prefix="manifests")
    ) if rows else []
    meta = {"cnnspark.run": run_id, "cnnspark.dataset": dataset}
    delta.commit(lake.table_uri(CHUNKS), CHUNKS_SCHEMA, chunk_files, operation="put", metadata=meta, storage_options=lake.storage_options)
    delta.commit(lake.table_uri(MANIFESTS), MANIFESTS_SCHEMA, manifest_files, removed, operation="put", metadata=meta, storage_options=lake.storage_options)
    return PutResult(
        files=len(rows), logical_bytes=sum(r["size"] for r in rows), new_chunks=len(fresh), new_bytes=sum(len(v) for v in fresh.values())
    )


def _rows_to_rewrite(lake: Lake, dataset: str, split_name: str, replaced: set[str]) -> tuple[list[str], list[pa.RecordBatch]]:
    """Manifest files holding rows of ``replaced`` paths, and their other rows (kept on rewrite)."""
    if not replaced:
        return [], []
    import pyarrow.parquet as pq

    removed, kept = [], []
    root = lake.table_uri(MANIFESTS).rstrip("/") + "/"
    for uri in lake.files(MANIFESTS):
        fs, path = delta.filesystem(uri)
        with fs.open_input_file(path) as f:
            table = pq.read_table(f, schema=MANIFESTS_SCHEMA)
        hit = [
            (d == dataset and s == split_name and p in replaced)
            for d, s, p in zip(
                table.column("dataset").to_pylist(), table.column("split").to_pylist(), table.column("relative_path").to_pylist(), strict=True
            )
        ]
        if any(hit):
            removed.append(uri[len(root):] if uri.startswith(root) else uri)
            kept.extend(table.filter(pa.array([not h for h in hit])).to_batches())
    return removed, kept
