"""``cnnspark export``: rebuild a dataset's files into a folder, byte for byte.

Files land at ``OUT/<relative_path>`` (the path under the ingest's SOURCE). Without a split,
every split is exported; a relative path present in two splits is an error (pass ``--split``).
Each file is rebuilt from its chunks, checked against its XXH3-128 content hash, written to a
temporary name and renamed into place, so ``OUT`` never holds a partial or wrong file.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cnnspark.cache import ChunkCache
from cnnspark.errors import ConfigError, LakeError
from cnnspark.lake import Lake
from cnnspark.rebuild import LakeReader
from cnnspark.sizes import format_size


@dataclass
class ExportSummary:
    lake: str
    dataset: str
    split: str | None
    out: str
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        scope = f"split {self.split!r}" if self.split else "all splits"
        return (
            f"exported {self.files} files ({format_size(self.bytes)}) of dataset {self.dataset!r} ({scope}) "
            f"to {self.out} in {self.seconds:.1f} s; every file matched its content hash"
        )


def _safe_target(out: Path, relative_path: str) -> Path:
    target = (out / relative_path).resolve()
    if out.resolve() not in target.parents:
        raise LakeError(f"refusing to export {relative_path!r}: the path leaves the output folder {out}")
    return target


def export(
    lake: Lake | str,
    dataset: str,
    out: str | os.PathLike,
    *,
    split: str | None = None,
    cache: bool | ChunkCache | None = False,
    progress: bool = True,
) -> ExportSummary:
    """Rebuild every file of ``dataset`` (one ``split``, or all) under ``out``; see the module doc."""
    reader = LakeReader(lake, cache=cache)
    reader.lake.require()
    out = Path(out).expanduser()
    manifests = reader.manifests(dataset, split=split)
    if manifests.num_rows == 0:
        raise LakeError(
            f"dataset {dataset!r}" + (f" split {split!r}" if split else "") + f" has no files in the lake {reader.lake.uri}"
        )
    paths = manifests.column("relative_path").to_pylist()
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise ConfigError(f"{dup!r} is in several splits of {dataset!r}; pass --split to export one of them")
    manifests = manifests.sort_by("relative_path")
    summary = ExportSummary(lake=reader.lake.uri, dataset=dataset, split=split, out=str(out))
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(sum(manifests.column("size").to_pylist())), unit="B", unit_scale=True, unit_divisor=1024,
                   desc=f"export {dataset}", file=sys.stderr)
    try:
        for row, data in reader.rebuild_many(manifests):
            target = _safe_target(out, row["relative_path"])
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
            summary.files += 1
            summary.bytes += len(data)
            if bar is not None:
                bar.update(len(data))
    finally:
        if bar is not None:
            bar.close()
    summary.seconds = round(time.monotonic() - started, 2)
    return summary
