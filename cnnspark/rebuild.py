"""Open a lake and rebuild files from it, one or many at a time.

    reader = open_lake("/data/lake")                     # node cache on by default
    data = reader.read_file("scans-v2", "cat/cat_0.png")  # bytes, checked against content_hash
    for row, data in reader.rebuild_many(reader.manifests("scans-v2", split="val")):
        ...

Chunk lookups go through :class:`cnnspark.chunkstore.ChunkIndex`: a batch of files costs one
cache probe per chunk and one read per chunks row group that holds a missing chunk (Delta file
stats, then Parquet row-group stats), never a scan of the chunks table. Every rebuilt file is
hashed (XXH3-128) and compared with its manifest's ``content_hash``; a mismatch raises
:class:`~cnnspark.errors.IntegrityError` naming the file and the bad chunks.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from cnnspark import chunkstore
from cnnspark.cache import ChunkCache, resolve
from cnnspark.errors import IntegrityError, LakeError
from cnnspark.lake import Lake
from cnnspark.tables import MANIFESTS

# Manifest columns a rebuild needs.
REBUILD_COLUMNS = ["dataset", "split", "label", "relative_path", "size", "content_hash", "chunk_ids", "chunk_sizes", "format"]
# A batch of files is cut when it holds this many files or logical bytes.
BATCH_FILES = 256
BATCH_BYTES = 256 * 1024 * 1024


class LakeReader:
    """Rebuilds files of one lake. Picklable; safe to share between threads.

    ``cache``: a :class:`~cnnspark.cache.ChunkCache`, True (build one from ``cache_dir`` /
    ``cache_size`` or the environment), False (no cache) or None (on unless
    ``$CNNSPARK_CACHE=off``). ``readahead``: with a cache, keep every chunk of each row group
    read, not only the ones asked for (they were read anyway; the next files usually need them).
    """

    def __init__(
        self,
        lake: Lake | str,
        *,
        cache: bool | ChunkCache | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache_size: int | str | None = None,
        readahead: bool = True,
        threads: int = 4,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        self.lake = lake if isinstance(lake, Lake) else Lake(lake, storage_options=storage_options)
        self.cache = resolve(cache, directory=cache_dir, max_bytes=cache_size)
        self.readahead = readahead
        self.threads = threads
        self.index = chunkstore.ChunkIndex(self.lake)
        self._fetch_lock = threading.Lock()
        self._unwritten: dict[bytes, bytes] = {}  # read from the lake, being written to the cache

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_fetch_lock"], state["_unwritten"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fetch_lock = threading.Lock()
        self._unwritten = {}

    def __repr__(self) -> str:
        return f"LakeReader({self.lake.uri!r}, cache={self.cache!r})"

    # ------------------------------------------------------------------ manifests

    def manifests(
        self,
        dataset: str | None = None,
        *,
        split: str | None = None,
        paths: Sequence[str] | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Manifest rows of the current snapshot, filtered by dataset, split and relative paths."""
        self.lake.require()
        expr = None
        for col, value in (("dataset", dataset), ("split", split)):
            if value is not None:
                term = pc.field(col) == value
                expr = term if expr is None else expr & term
        if paths is not None:
            term = pc.field("relative_path").isin(list(paths))
            expr = term if expr is None else expr & term
        return self.lake.arrow(MANIFESTS, columns=columns or REBUILD_COLUMNS, filter=expr)

    def datasets(self) -> list[str]:
        """Names of the datasets in the lake, sorted."""
        self.lake.require()
        table = self.lake.arrow(MANIFESTS, columns=["dataset"])
        return sorted(set(table.column("dataset").to_pylist()))

    # ------------------------------------------------------------------ chunks

    def fetch(self, ids: Iterable[bytes]) -> dict[bytes, bytes]:
        """Chunk bytes by id: from the cache where it holds them, else from the lake (then cached)."""
        wanted = set(ids)
        out: dict[bytes, bytes] = self.cache.get_many(wanted) if self.cache is not None else {}
        missing = wanted - out.keys()
        if not missing:
            return out
        if self.cache is None:
            return self._fetch_lake(missing, out)
        # One lake read at a time per process: with read-ahead, a concurrent worker's read usually
        # brings our chunks too, so look again once it is our turn. Chunks another thread read but
        # is still writing to the cache are taken from memory, so cache writes happen outside the
        # lock, in parallel with the other threads' decoding.
        with self._fetch_lock:
            for cid in missing:
                data = self._unwritten.get(cid)
                if data is not None:
                    out[cid] = data
            missing = wanted - out.keys()
            if missing:
                out.update(self.cache.get_many(missing))
                missing = wanted - out.keys()
            fetched: dict[bytes, bytes] = {}
            if missing:
                fetched = chunkstore.fetch_batch(self.index, missing, readahead=self.readahead, threads=self.threads)
                self._unwritten.update(fetched)
        if fetched:
            try:
                self.cache.put_many(fetched)  # put() re-hashes: bytes that do not match are not kept
            finally:
                with self._fetch_lock:
                    for cid in fetched:
                        self._unwritten.pop(cid, None)
            for cid in missing:
                if cid in fetched:
                    out[cid] = fetched[cid]
        return out

    def _fetch_lake(self, missing: set[bytes], out: dict[bytes, bytes]) -> dict[bytes, bytes]:
        """Without a cache: the missing chunks straight from the lake."""
        if missing:
            fetched = chunkstore.fetch_batch(self.index, missing, readahead=False, threads=self.threads)
            for cid in missing:
                if cid in fetched:
                    out[cid] = fetched[cid]
        return out

    # ------------------------------------------------------------------ files

    def rebuild(self, manifest: Mapping, chunks: Mapping[bytes, bytes] | None = None) -> bytes:
        """The bytes of one manifest row (a dict with at least dataset, relative_path, chunk_ids, content_hash)."""
        ids = list(manifest["chunk_ids"])
        if chunks is None:
            chunks = self.fetch(ids)
        data = chunkstore.rebuild({**manifest, "chunk_ids": ids}, dict(chunks) if not isinstance(chunks, dict) else chunks)
        check_file(manifest, data, chunks)
        return data

    def rebuild_many(self, manifests: pa.Table | Iterable[Mapping], *, batch_files: int = BATCH_FILES) -> Iterator[tuple[dict, bytes]]:
        """(manifest row as dict, bytes) for every row, in order; chunk lookups batched per group of files."""
        rows = manifests.to_pylist() if isinstance(manifests, pa.Table) else manifests
        batch: list[dict] = []
        size = 0
        for row in rows:
            batch.append(dict(row))
            size += int(row.get("size") or 0)
            if len(batch) >= batch_files or size >= BATCH_BYTES:
                yield from self._rebuild_batch(batch)
                batch, size = [], 0
        if batch:
            yield from self._rebuild_batch(batch)

    def _rebuild_batch(self, batch: list[dict]) -> Iterator[tuple[dict, bytes]]:
        chunks = self.fetch(i for row in batch for i in row["chunk_ids"])
        for row in batch:
            yield row, self.rebuild(row, chunks)

    def read_file(self, dataset: str, relative_path: str, *, split: str | None = None) -> bytes:
        """The bytes of one file by (dataset, relative path); ``split`` when the path is in several."""
        table = self.manifests(dataset, split=split, paths=[relative_path])
        if table.num_rows == 0:
            raise LakeError(
                f"no file {relative_path!r} in dataset {dataset!r}"
                + (f" split {split!r}" if split else "")
                + f" of the lake {self.lake.uri}; list the dataset's files with reader.manifests(dataset)"
            )
        splits = sorted(set(table.column("split").to_pylist()))
        if len(splits) > 1:
            raise LakeError(
                f"{dataset}/{relative_path} is in several splits ({', '.join(splits)}); pass split= to choose one"
            )
        return self.rebuild(table.to_pylist()[0])


def check_file(manifest: Mapping, data: bytes, chunks: Mapping[bytes, bytes] | None = None) -> None:
    """Raise IntegrityError when ``data`` does not hash to the manifest's content hash."""
    if xxhash.xxh3_128_digest(data) == manifest["content_hash"]:
        return
    bad = []
    if chunks is not None:
        bad = [i.hex() for i in manifest["chunk_ids"] if i in chunks and xxhash.xxh3_128_digest(chunks[i]) != i]
    detail = f"; chunk(s) whose bytes do not match their id: {', '.join(bad[:5])}" if bad else ""
    raise IntegrityError(
        f"{manifest['dataset']}/{manifest['relative_path']}: rebuilt bytes do not match the manifest's content hash"
        f"{detail}; run `cnnspark verify --lake LAKE --dataset {manifest['dataset']}` for a full report"
    )


def open_lake(
    lake: Lake | str,
    *,
    cache: bool | ChunkCache | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache_size: int | str | None = None,
    readahead: bool = True,
    storage_options: dict[str, str] | None = None,
) -> LakeReader:
    """A :class:`LakeReader` on ``lake`` (a path, URI or Lake); raises LakeError if nothing was ingested."""
    reader = LakeReader(
        lake, cache=cache, cache_dir=cache_dir, cache_size=cache_size, readahead=readahead, storage_options=storage_options
    )
    reader.lake.require()
    return reader
