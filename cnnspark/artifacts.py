"""Training artifacts stored in the lake through the chunk store, so what repeats across epochs
and runs (frozen layers, unchanged feature maps, identical configs) is stored once.

Every artifact is a manifest row (split ``artifacts``) of a dataset named after its run:

    artifacts/<run>/checkpoints           epoch-0001.pt, epoch-0002.pt, ...  (torch.save of a dict:
                                          model and optimizer state, epoch, metrics history, config,
                                          label mapping)
    artifacts/<run>/results               metrics.json (per-epoch metrics), curve.png (training curve)
    artifacts/<run>/features/<split>/<layer>
                                          epoch-0005/<relative path of the image>.npy (feature maps)

Checkpoints are ``torch.save`` zip archives: each tensor is a separate, uncompressed record in
state-dict order, so a tensor that did not change (a frozen layer) is the same byte run in every
checkpoint, and content-defined chunking stores it once. Artifacts use smaller chunks than
images (:data:`ARTIFACT_CHUNKING`, 4/16/64 KiB) so that layers of small models share chunks too.

Only one process may write a run's artifacts at a time (rank 0 in training): two concurrent
writers of the same Delta tables would conflict.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from cnnspark import chunkstore
from cnnspark.chunking import ChunkingParams, content_hash
from cnnspark.errors import ConfigError, IntegrityError, LakeError
from cnnspark.lake import Lake
from cnnspark.sizes import KiB
from cnnspark.store import PutResult, put_bytes
from cnnspark.tables import MANIFESTS

PREFIX = "artifacts"
SPLIT = "artifacts"
CHECKPOINTS = "checkpoints"
RESULTS = "results"
FEATURES = "features"
METRICS_FILE = "metrics.json"
CURVE_FILE = "curve.png"
ARTIFACT_CHUNKING = ChunkingParams(min_size=4 * KiB, avg_size=16 * KiB, max_size=64 * KiB)
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHECKPOINT_NAME = re.compile(r"^epoch-(\d+)\.pt$")


def check_run_name(run: str) -> str:
    """Return ``run`` if it is a valid run name (letters, digits, ``._-``; no slashes), else raise."""
    if not _RUN_NAME.match(run or ""):
        raise ConfigError(
            f"invalid run name {run!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return run


def run_dataset(run: str, kind: str) -> str:
    """The dataset name of one kind of artifact of ``run``, e.g. ``artifacts/r1/checkpoints``."""
    return f"{PREFIX}/{check_run_name(run)}/{kind}"


def features_kind(split: str, layer: str) -> str:
    return f"{FEATURES}/{split}/{layer}"


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.pt"


@dataclass(frozen=True)
class Artifact:
    """One stored artifact: where it is in the lake and what it costs."""

    run: str
    kind: str  # checkpoints | results | features/<split>/<layer>
    relative_path: str
    size: int
    chunks: int
    stored_at: datetime

    @property
    def dataset(self) -> str:
        return run_dataset(self.run, self.kind)

    @property
    def name(self) -> str:
        """``kind/relative_path``: what ``cnnspark artifacts export`` takes."""
        return f"{self.kind}/{self.relative_path}"


# ---------------------------------------------------------------------------------------------
# Generic put / get


def put(lake: Lake, run: str, kind: str, items: Mapping[str, bytes], *, format: str = "binary") -> PutResult:
    """Store ``items`` (relative path -> bytes) as artifacts of ``run`` (one Delta commit per table)."""
    return put_bytes(lake, run_dataset(run, kind), items, split_name=SPLIT, format=format, chunking=ARTIFACT_CHUNKING)


def _manifests(lake: Lake, datasets_filter: pc.Expression, columns: list[str] | None = None):
    if not lake.exists(MANIFESTS):
        return None
    return lake.arrow(MANIFESTS, columns=columns, filter=datasets_filter & (pc.field("split") == SPLIT))


def read(lake: Lake, run: str, kind: str, relative_path: str) -> bytes:
    """The bytes of one artifact, rebuilt from its chunks and checked against its content hash."""
    table = _manifests(lake, (pc.field("dataset") == run_dataset(run, kind)) & (pc.field("relative_path") == relative_path))
    if table is None or table.num_rows == 0:
        raise LakeError(
            f"run {run!r} has no artifact {kind}/{relative_path} in the lake {lake.uri}; "
            f"list what it has with `cnnspark artifacts list --lake {lake.uri} --run {run}`"
        )
    row = table.slice(table.num_rows - 1).to_pylist()[0]
    data = chunkstore.rebuild(row, chunkstore.fetch(lake, row["chunk_ids"]))
    if content_hash(data) != row["content_hash"]:
        raise IntegrityError(f"artifact {kind}/{relative_path} of run {run!r} does not match its content hash; run `cnnspark verify`")
    return data


def list_artifacts(lake: Lake, run: str | None = None) -> list[Artifact]:
    """Artifacts of ``run`` (or of every run), ordered by run, kind and path."""
    prefix = f"{PREFIX}/{check_run_name(run)}/" if run else f"{PREFIX}/"
    table = _manifests(
        lake,
        pc.starts_with(pc.field("dataset"), prefix),
        columns=["dataset", "relative_path", "size", "chunk_ids", "ingested_at"],
    )
    if table is None:
        return []
    found = []
    for row in table.to_pylist():
        _, run_name, kind = row["dataset"].split("/", 2)
        found.append(
            Artifact(run=run_name, kind=kind, relative_path=row["relative_path"], size=row["size"], chunks=len(row["chunk_ids"]), stored_at=row["ingested_at"])
        )
    return sorted(found, key=lambda a: (a.run, a.kind, a.relative_path))


def run_summary(lake: Lake, run: str) -> dict:
    """Files, logical bytes, bytes of the distinct chunks they use, and the ratio, for one run."""
    table = _manifests(lake, pc.starts_with(pc.field("dataset"), f"{PREFIX}/{check_run_name(run)}/"), columns=["size", "chunk_ids", "chunk_sizes"])
    rows = table.to_pylist() if table is not None else []
    unique: dict[bytes, int] = {}
    for row in rows:
        unique.update(zip(row["chunk_ids"], row["chunk_sizes"], strict=True))
    logical, stored = sum(r["size"] for r in rows), sum(unique.values())
    return {"files": len(rows), "logical_bytes": logical, "unique_bytes": stored, "dedup_ratio": logical / stored if stored else 1.0}


def list_runs(lake: Lake) -> list[str]:
    return sorted({a.run for a in list_artifacts(lake)})


def parse_name(name: str) -> tuple[str, str]:
    """``kind/relative_path`` -> (kind, relative_path); features kinds span three path parts."""
    parts = name.strip("/").split("/")
    if parts[0] == FEATURES and len(parts) >= 4:
        return "/".join(parts[:3]), "/".join(parts[3:])
    if parts[0] in (CHECKPOINTS, RESULTS) and len(parts) >= 2:
        return parts[0], "/".join(parts[1:])
    raise ConfigError(
        f"artifact name {name!r} should look like checkpoints/epoch-0003.pt, results/metrics.json or "
        "features/<split>/<layer>/<path>; see `cnnspark artifacts list`"
    )


def export(lake: Lake, run: str, name: str, out: str | Path) -> Path:
    """Write the artifact ``name`` (``kind/relative_path``) of ``run`` to ``out`` (a file or a folder)."""
    kind, rel = parse_name(name)
    data = read(lake, run, kind, rel)
    target = Path(out)
    if target.is_dir() or str(out).endswith(("/", "\\")):
        target = target / Path(rel).name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_bytes(state: Mapping[str, Any]) -> bytes:
    """Serialize a checkpoint dict with ``torch.save`` (tensors as separate uncompressed records)."""
    import torch

    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def save_checkpoint(lake: Lake, run: str, epoch: int, state: Mapping[str, Any]) -> PutResult:
    """Store ``state`` as ``checkpoints/epoch-NNNN.pt`` of ``run``."""
    return put(lake, run, CHECKPOINTS, {checkpoint_name(epoch): checkpoint_bytes(state)}, format="torch")


def checkpoint_epochs(lake: Lake, run: str) -> list[int]:
    """Epochs that have a stored checkpoint, ascending."""
    table = _manifests(lake, pc.field("dataset") == run_dataset(run, CHECKPOINTS), columns=["relative_path"])
    if table is None:
        return []
    epochs = []
    for rel in table.column("relative_path").to_pylist():
        match = _CHECKPOINT_NAME.match(rel)
        if match:
            epochs.append(int(match.group(1)))
    return sorted(epochs)


def load_checkpoint(lake: Lake, run: str, epoch: int | None = None, *, map_location: str = "cpu") -> dict:
    """The checkpoint dict of ``epoch`` (the latest when None); LakeError when there is none."""
    import torch

    epochs = checkpoint_epochs(lake, run)
    if not epochs:
        raise LakeError(f"run {run!r} has no checkpoints in the lake {lake.uri}; train it first (without --resume)")
    if epoch is None:
        epoch = epochs[-1]
    elif epoch not in epochs:
        raise LakeError(f"run {run!r} has no checkpoint of epoch {epoch}; it has epochs {', '.join(map(str, epochs))}")
    data = read(lake, run, CHECKPOINTS, checkpoint_name(epoch))
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)


def shared_chunks(lake: Lake, run: str, kind: str, a: str, b: str) -> tuple[int, int]:
    """(chunks of ``b`` also in ``a``, bytes of those chunks): how much two artifacts share."""
    table = _manifests(lake, pc.field("dataset") == run_dataset(run, kind), columns=["relative_path", "chunk_ids", "chunk_sizes"])
    rows = {r["relative_path"]: r for r in (table.to_pylist() if table is not None else [])}
    for rel in (a, b):
        if rel not in rows:
            raise LakeError(f"run {run!r} has no artifact {kind}/{rel}")
    in_a = set(rows[a]["chunk_ids"])
    pairs = [(i, s) for i, s in zip(rows[b]["chunk_ids"], rows[b]["chunk_sizes"], strict=True) if i in in_a]
    return len(pairs), sum(s for _, s in pairs)
