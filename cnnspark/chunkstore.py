"""Chunk lookups by id that read little: Delta log statistics pick the files whose key range can
hold the ids, and Parquet row-group statistics on ``key`` pick the row groups inside them.

Chunk files are sorted by ``key`` (the first 8 bytes of the id as int64), so a batch of ids
touches about one row group per id, never a full scan of the chunks table.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from cnnspark import delta
from cnnspark.chunking import chunk_key
from cnnspark.lake import Lake
from cnnspark.tables import CHUNKS


def existing_ids(lake: Lake, ids: Iterable[bytes]) -> set[bytes]:
    """The subset of ``ids`` the lake already stores (reads only the ``id`` column of the
    row groups that can hold them)."""
    wanted = set(ids)
    index = ChunkIndex(lake)
    present: set[bytes] = set()
    for uri, row_group in index.locate(chunk_key(i) for i in wanted):
        present.update(read_row_group(index, uri, row_group, columns=("id",)).column("id").to_pylist())
    return present & wanted


def fetch(lake: Lake, ids: Iterable[bytes]) -> dict[bytes, bytes]:
    """Chunk bytes by id for a one-off lookup (duplicates of an id, from concurrent ingests, are
    identical). Readers that look up many batches keep a :class:`ChunkIndex` and call
    :func:`fetch_batch` themselves."""
    return fetch_batch(ChunkIndex(lake), ids)


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


# ---------------------------------------------------------------------------------------------
# Batched lookups for the read path: a per-snapshot locator that keeps the Delta file stats and
# the Parquet footers in memory, so a batch of ids costs one read per row group that holds them.


class ChunkIndex:
    """Locates chunk ids in one snapshot of the chunks table without scanning it.

    Two levels of pruning, both cached for the life of the object (data files are immutable):
    the Delta log's per-file min/max of ``key`` picks the files, and each file's Parquet footer
    (row-group min/max of ``key``, read once) picks the row group inside it. Files are sorted by
    key, so their row groups cover disjoint key ranges and one id maps to one row group per file.
    Thread-safe; :meth:`refresh` takes a newer snapshot (used when an id is not found).
    """

    def __init__(self, lake: Lake) -> None:
        import threading

        self.lake = lake
        self._lock = threading.Lock()
        self._files: list[tuple[str, int | None, int | None]] | None = None
        self._footers: dict[str, tuple] = {}
        self.version: int | None = None

    def __getstate__(self) -> dict:
        return {"lake": self.lake}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["lake"])

    def refresh(self) -> None:
        """Re-read the Delta log: current files and their key ranges."""
        table_uri = self.lake.table_uri(CHUNKS)
        files: list[tuple[str, int | None, int | None]] = []
        version = None
        if delta.table_exists(table_uri, self.lake.storage_options):
            from deltalake import DeltaTable

            dt = DeltaTable(table_uri, storage_options=self.lake.storage_options)
            version = dt.version()
            stats = pa.table(dt.get_add_actions(flatten=True))
            root = table_uri.rstrip("/")
            lo = stats.column("min.key").to_pylist() if "min.key" in stats.column_names else [None] * stats.num_rows
            hi = stats.column("max.key").to_pylist() if "max.key" in stats.column_names else [None] * stats.num_rows
            for path, a, b in zip(stats.column("path").to_pylist(), lo, hi, strict=True):
                files.append((path if "://" in path or path.startswith("/") else f"{root}/{path}", a, b))
        with self._lock:
            self._files = files
            self.version = version

    def files(self) -> list[tuple[str, int | None, int | None]]:
        if self._files is None:
            self.refresh()
        return self._files  # type: ignore[return-value]

    def footer(self, uri: str) -> tuple:
        """(FileMetaData, row-group min keys, max keys, sorted flag) of one data file, cached."""
        import numpy as np
        import pyarrow.parquet as pq

        with self._lock:
            hit = self._footers.get(uri)
        if hit is not None:
            return hit
        fs, path = delta.filesystem(uri)
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
        col = meta.schema.names.index("key")
        mins, maxs = [], []
        for i in range(meta.num_row_groups):
            st = meta.row_group(i).column(col).statistics
            if st is None or not st.has_min_max:
                mins.append(np.iinfo(np.int64).min)
                maxs.append(np.iinfo(np.int64).max)
            else:
                mins.append(st.min)
                maxs.append(st.max)
        lo, hi = np.array(mins, np.int64), np.array(maxs, np.int64)
        ordered = bool(len(lo) < 2 or (np.all(lo[1:] > hi[:-1])))
        entry = (meta, lo, hi, ordered)
        with self._lock:
            self._footers[uri] = entry
        return entry

    def locate(self, keys: Iterable[int]) -> dict[tuple[str, int], list[int]]:
        """{(file uri, row group): keys that row group may hold} for ``keys``."""
        import numpy as np

        karr = np.unique(np.fromiter(keys, dtype=np.int64))
        out: dict[tuple[str, int], list[int]] = {}
        if karr.size == 0:
            return out
        for uri, a, b in self.files():
            if a is not None and b is not None:
                sel = karr[(karr >= a) & (karr <= b)]
            else:
                sel = karr
            if sel.size == 0:
                continue
            _, lo, hi, ordered = self.footer(uri)
            if lo.size == 0:
                continue
            if ordered:
                rg = np.searchsorted(hi, sel, side="left")
                ok = rg < hi.size
                rg_ok, k_ok = rg[ok], sel[ok]
                inside = lo[rg_ok] <= k_ok
                for r, k in zip(rg_ok[inside].tolist(), k_ok[inside].tolist()):
                    out.setdefault((uri, r), []).append(k)
            else:
                for k in sel.tolist():
                    for r in np.nonzero((lo <= k) & (hi >= k))[0].tolist():
                        out.setdefault((uri, r), []).append(k)
        return out


def read_row_group(index: ChunkIndex, uri: str, row_group: int, columns: tuple[str, ...] = ("id", "data")) -> pa.Table:
    """One row group of a chunks data file (its footer comes from ``index``'s cache)."""
    import pyarrow.parquet as pq

    meta = index.footer(uri)[0]
    fs, path = delta.filesystem(uri)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f, metadata=meta).read_row_group(row_group, columns=list(columns))


def fetch_batch(
    index: ChunkIndex,
    ids: Iterable[bytes],
    *,
    readahead: bool = False,
    threads: int = 1,
) -> dict[bytes, bytes]:
    """Chunk bytes for ``ids`` (those found), reading each needed row group once.

    With ``readahead`` every chunk of the row groups read is returned, not only those asked for
    (callers with a cache keep them: the bytes were read and decompressed anyway). Ids not found
    in the snapshot trigger one :meth:`ChunkIndex.refresh` and a second look, for tables that
    grew since the index was built. ``threads`` > 1 reads row groups in parallel.
    """
    wanted = set(ids)
    found: dict[bytes, bytes] = {}

    def one_pass() -> None:
        todo = wanted - found.keys()
        if not todo:
            return
        located = index.locate(chunk_key(i) for i in todo)
        groups = list(located)

        def read(group: tuple[str, int]) -> pa.Table:
            return read_row_group(index, *group)

        if threads > 1 and len(groups) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(threads, len(groups))) as pool:
                tables = list(pool.map(read, groups))
        else:
            tables = [read(g) for g in groups]
        todo_array = pa.array(list(todo), pa.binary())
        for table in tables:
            if not readahead:
                table = table.filter(pc.is_in(table.column("id"), value_set=todo_array))
            for cid, data in zip(table.column("id").to_pylist(), table.column("data").to_pylist(), strict=True):
                found.setdefault(cid, data)

    one_pass()
    if wanted - found.keys() and index._files is not None:
        index.refresh()
        one_pass()
    return found
