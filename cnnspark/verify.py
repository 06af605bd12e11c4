"""``cnnspark verify``: prove the lake still holds the bytes it claims.

Three passes, all in this process (no Spark), reading the chunks table about twice:

1. Chunks: every row group of every current chunks file is read and every chunk re-hashed
   (XXH3-128) against its id; its ``size`` and ``key`` columns are checked too. Row groups that
   cannot be read (a damaged Parquet page) are reported with the ids they hold when the id
   column is still readable. Row groups are read by a thread pool.
2. References: every manifest row (of ``dataset``, or all) is checked for chunk ids the table
   does not hold, and for chunks found bad in pass 1.
3. Files: every file not already condemned is rebuilt (batched lookups, no cache) and its
   XXH3-128 compared with the manifest's ``content_hash``.

Scale: memory grows with the number of chunk ids (about 100 bytes each, so about 1 GB for ten
million chunks); time with the lake's size, at the speed of one machine's disk and cores. For
lakes beyond that, run it per dataset (``--dataset``), which limits passes 2 and 3.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from cnnspark import delta
from cnnspark.chunking import chunk_key
from cnnspark.errors import CnnsparkError, LakeError
from cnnspark.lake import Lake
from cnnspark.rebuild import LakeReader, check_file
from cnnspark.tables import CHUNKS, MANIFESTS

MAX_LISTED = 50


@dataclass
class VerifyReport:
    """What verify found; ``ok`` is False on any mismatch."""

    lake: str
    dataset: str | None
    chunk_files: int = 0
    chunks_checked: int = 0
    chunk_bytes: int = 0
    bad_chunks: dict[str, str] = field(default_factory=dict)  # id hex -> reason (with its data file)
    unreadable: list[str] = field(default_factory=list)  # "file row group N: error"
    files_checked: int = 0
    bad_files: dict[str, str] = field(default_factory=dict)  # dataset/split/relative_path -> reason
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.bad_chunks or self.unreadable or self.bad_files)

    def to_dict(self) -> dict:
        return {
            "lake": self.lake, "dataset": self.dataset, "ok": self.ok, "chunk_files": self.chunk_files,
            "chunks_checked": self.chunks_checked, "chunk_bytes": self.chunk_bytes, "bad_chunks": self.bad_chunks,
            "unreadable_row_groups": self.unreadable, "files_checked": self.files_checked, "bad_files": self.bad_files,
            "seconds": self.seconds,
        }

    def render(self) -> str:
        scope = f"dataset {self.dataset!r}" if self.dataset else "all datasets"
        lines = [
            f"verify {self.lake} ({scope}): {'OK' if self.ok else 'FAILED'}",
            f"  chunks checked     {self.chunks_checked} in {self.chunk_files} data files ({self.chunk_bytes} bytes)",
            f"  bad chunks         {len(self.bad_chunks)}",
            f"  unreadable groups  {len(self.unreadable)}",
            f"  files rebuilt      {self.files_checked}",
            f"  bad files          {len(self.bad_files)}",
            f"  took               {self.seconds:.1f} s",
        ]
        if self.unreadable:
            lines.append("unreadable chunk row groups:")
            lines += [f"  {u}" for u in self.unreadable[:MAX_LISTED]]
        if self.bad_chunks:
            lines.append("bad chunks:")
            lines += [f"  {cid}: {why}" for cid, why in list(self.bad_chunks.items())[:MAX_LISTED]]
            if len(self.bad_chunks) > MAX_LISTED:
                lines.append(f"  ... and {len(self.bad_chunks) - MAX_LISTED} more (use --json for all)")
        if self.bad_files:
            lines.append("affected files:")
            lines += [f"  {name}: {why}" for name, why in list(self.bad_files.items())[:MAX_LISTED]]
            if len(self.bad_files) > MAX_LISTED:
                lines.append(f"  ... and {len(self.bad_files) - MAX_LISTED} more (use --json for all)")
        if not self.ok:
            lines.append("re-ingest the affected files from their sources (`cnnspark ingest`) to repair them")
        return "\n".join(lines)


def _check_row_group(uri: str, rg: int) -> tuple[list[bytes], dict[bytes, str], list[str], int]:
    """(ids present, bad id -> reason, unreadable notes, bytes) of one chunks row group."""
    fs, path = delta.filesystem(uri)
    name = uri.rsplit("/", 1)[-1]
    bad: dict[bytes, str] = {}
    try:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            head = pf.read_row_group(rg, columns=["id", "key", "size"])
    except Exception as e:  # noqa: BLE001 - any decoding error is a finding, not a crash
        return [], {}, [f"{name} row group {rg}: ids unreadable ({type(e).__name__}: {e})"], 0
    ids = head.column("id").to_pylist()
    try:
        with fs.open_input_file(path) as f:
            data = pq.ParquetFile(f).read_row_group(rg, columns=["data"]).column("data").to_pylist()
    except Exception as e:  # noqa: BLE001
        for cid in ids:
            bad[cid] = f"data unreadable in {name} row group {rg}"
        return ids, bad, [f"{name} row group {rg}: data unreadable ({type(e).__name__}: {e})"], 0
    nbytes = 0
    for cid, key, size, blob in zip(ids, head.column("key").to_pylist(), head.column("size").to_pylist(), data, strict=True):
        nbytes += len(blob)
        if xxhash.xxh3_128_digest(blob) != cid:
            bad[cid] = f"bytes do not hash to the id (in {name} row group {rg})"
        elif len(blob) != size:
            bad[cid] = f"size column says {size}, data has {len(blob)} bytes (in {name})"
        elif key != chunk_key(cid):
            bad[cid] = f"key column does not match the id (in {name})"
    return ids, bad, [], nbytes


def verify(
    lake: Lake | str,
    *,
    dataset: str | None = None,
    threads: int = 4,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Check the lake (or one dataset's files) end to end; see the module doc."""
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    lake.require()
    started = time.monotonic()
    report = VerifyReport(lake=lake.uri, dataset=dataset)
    say = progress or (lambda _m: None)

    files = lake.files(CHUNKS)
    report.chunk_files = len(files)
    groups = []
    for uri in files:
        fs, path = delta.filesystem(uri)
        with fs.open_input_file(path) as f:
            try:
                n = pq.ParquetFile(f).metadata.num_row_groups
            except Exception as e:  # noqa: BLE001
                report.unreadable.append(f"{uri.rsplit('/', 1)[-1]}: footer unreadable ({type(e).__name__}: {e})")
                continue
        groups += [(uri, rg) for rg in range(n)]
    say(f"[1/3] re-hashing the chunks in {len(groups)} row groups of {len(files)} data files")
    present: set[bytes] = set()
    bad: dict[bytes, str] = {}
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for ids, bad_here, notes, nbytes in pool.map(lambda g: _check_row_group(*g), groups):
            present.update(ids)
            bad.update(bad_here)
            report.unreadable += notes
            report.chunks_checked += len(ids)
            report.chunk_bytes += nbytes
    report.bad_chunks = {cid.hex(): why for cid, why in bad.items()}

    say("[2/3] checking every manifest's chunk references")
    filt = pc.field("dataset") == dataset if dataset else None
    manifests = lake.arrow(
        MANIFESTS, columns=["dataset", "split", "relative_path", "size", "content_hash", "chunk_ids", "chunk_sizes"], filter=filt
    )
    if dataset and manifests.num_rows == 0:
        raise LakeError(f"dataset {dataset!r} has no files in the lake {lake.uri}; check the name (`--dataset`)")
    to_rebuild = []
    for row in manifests.to_pylist():
        name = f"{row['dataset']}/{row['split']}/{row['relative_path']}"
        missing = [i.hex() for i in row["chunk_ids"] if i not in present]
        corrupt = [i.hex() for i in row["chunk_ids"] if i in bad]
        if missing:
            report.bad_files[name] = f"{len(missing)} chunk(s) missing from the chunks table: {', '.join(missing[:3])}"
        elif corrupt:
            report.bad_files[name] = f"{len(corrupt)} bad chunk(s): {', '.join(corrupt[:3])}"
        elif sum(row["chunk_sizes"]) != row["size"]:
            report.bad_files[name] = f"chunk sizes add up to {sum(row['chunk_sizes'])}, the file has {row['size']} bytes"
        else:
            to_rebuild.append(row)

    say(f"[3/3] rebuilding and re-hashing {len(to_rebuild)} files")
    reader = LakeReader(lake, cache=False, threads=threads)
    batch_size = 256
    for start in range(0, len(to_rebuild), batch_size):
        batch = to_rebuild[start : start + batch_size]
        chunks = reader.fetch(i for row in batch for i in row["chunk_ids"])
        for row in batch:
            name = f"{row['dataset']}/{row['split']}/{row['relative_path']}"
            report.files_checked += 1
            try:
                from cnnspark.chunkstore import rebuild

                check_file(row, rebuild(row, chunks), chunks)
            except CnnsparkError as e:
                report.bad_files[name] = str(e)
    report.seconds = round(time.monotonic() - started, 2)
    return report
