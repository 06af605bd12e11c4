"""Training input: Petastorm readers and torch DataLoaders over a lake, and a Spark DataFrame of
rebuilt files for ``petastorm.spark.make_spark_converter``.

``make_reader`` is Petastorm's ``make_batch_reader`` over the exact Parquet files of the
manifests table's current Delta snapshot (files whose Delta stats cannot hold the dataset are
left out). A predicate keeps the rows of the dataset, split and shard; a TransformSpec rebuilds
each row group's files (chunks from the node-local cache, else the lake) and decodes them with
:func:`cnnspark.decode.decode_image` inside Petastorm's worker pool. Each row comes out as

    image          float32 (channels, height, width)
    label          int64 index from the dataset's label mapping (-1 for unlabeled files)
    relative_path  str (only with ``with_path=True``; torch loaders cannot carry strings)

Sharding is by row, not by Parquet row group: the split's relative paths are ordered by their
XXH3-64 hash and cut into ``shard_count`` contiguous ranges of equal size, and each shard's
predicate keeps its range. So every shard gets data whenever the split has at least
``shard_count`` files (fewer raises ConfigError), shard sizes differ by at most one, classes are
mixed across shards, and one epoch over all shards yields every file exactly once. Petastorm's
own row-group sharding is not used: it needs at least as many row groups as shards in the whole
table and leaves shards empty when a split sits in few row groups.

Label mapping ("stored with the dataset"): the sorted distinct labels of the dataset's manifests
across all splits, stored as JSON at ``LAKE/_meta/<dataset>/labels.json`` on first use. Later
calls read it back; labels that appear later (a new ingest) are appended after the existing
ones, sorted among themselves, so indexes already used by a model never move.
"""

from __future__ import annotations

import functools
import json
import os
import urllib.parse
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from petastorm.predicates import PredicateBase

from cnnspark import delta
from cnnspark.cache import ChunkCache, resolve
from cnnspark.decode import DecodeOptions, decode_image
from cnnspark.errors import ConfigError, LakeError
from cnnspark.lake import Lake
from cnnspark.rebuild import LakeReader
from cnnspark.tables import MANIFESTS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Petastorm 0.12 uses pyarrow's legacy ParquetDataset; pyarrow 14 warns on every call.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")

META_FOLDER = "_meta"
LABELS_FILE = "labels.json"
UNLABELED = -1
READ_COLUMNS = ["dataset", "split", "label", "relative_path", "size", "content_hash", "chunk_ids", "chunk_sizes"]


# ---------------------------------------------------------------------------------------------
# Label mapping


def _labels_uri(lake: Lake, dataset: str) -> str:
    return f"{lake.uri}/{META_FOLDER}/{urllib.parse.quote(dataset, safe='')}/{LABELS_FILE}"


def _read_json(uri: str) -> dict | None:
    fs, path = delta.filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except (FileNotFoundError, OSError):
        return None


def _write_json(uri: str, value: dict) -> None:
    fs, path = delta.filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    payload = json.dumps(value, indent=2, sort_keys=True).encode("utf-8")
    if "://" in uri:  # object stores: a put is atomic
        with fs.open_output_stream(path) as f:
            f.write(payload)
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, path)


def label_mapping(lake: Lake | str, dataset: str, *, update: bool = True) -> dict[str, int]:
    """The dataset's stable label -> index mapping (see the module doc); stored on first use.

    With ``update=False`` nothing is written: a stored mapping is returned as it is, or a fresh
    one is computed.
    """
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    lake.require()
    uri = _labels_uri(lake, dataset)
    stored = _read_json(uri)
    mapping: dict[str, int] = dict(stored["labels"]) if stored else {}
    table = lake.arrow(MANIFESTS, columns=["label"], filter=pc.field("dataset") == dataset)
    if table.num_rows == 0 and not mapping:
        raise LakeError(f"dataset {dataset!r} has no files in the lake {lake.uri}; ingest it first")
    present = {v for v in table.column("label").to_pylist() if v is not None}
    new = sorted(present - mapping.keys())
    if new:
        start = len(mapping)
        mapping.update({label: start + i for i, label in enumerate(new)})
        if update:
            _write_json(uri, {"dataset": dataset, "labels": mapping})
    return mapping


# ---------------------------------------------------------------------------------------------
# Sharding and row selection (these objects travel to Petastorm workers: keep them picklable)


def path_hash(relative_path: str) -> int:
    """The 64-bit hash that orders a split's files for sharding."""
    return xxhash.xxh3_64_intdigest(relative_path.encode("utf-8"))


def shard_ranges(paths: Sequence[str], shard_count: int) -> list[tuple[int, int]]:
    """[lo, hi) hash ranges cutting ``paths`` into ``shard_count`` parts of equal size (+-1)."""
    hashes = np.sort(np.fromiter((path_hash(p) for p in paths), dtype=np.uint64, count=len(paths)))
    n = len(hashes)
    bounds = [0] + [int(hashes[(k * n) // shard_count]) for k in range(1, shard_count)] + [2**64]
    return [(bounds[k], bounds[k + 1]) for k in range(shard_count)]


class _RowPredicate(PredicateBase):
    """Petastorm predicate: rows of one dataset and split whose path hash is in [lo, hi)."""

    def __init__(self, dataset: str, split: str, lo: int, hi: int) -> None:
        self.dataset, self.split, self.lo, self.hi = dataset, split, lo, hi

    def get_fields(self) -> set[str]:
        return {"dataset", "split", "relative_path"}

    def do_include(self, values):
        import pandas as pd

        keep = (values["dataset"] == self.dataset) & (values["split"] == self.split)
        if self.lo > 0 or self.hi < 2**64:
            in_range = [keep_row and self.lo <= path_hash(p) < self.hi for keep_row, p in zip(keep.tolist(), values["relative_path"].tolist())]
            keep = pd.Series(in_range, index=values.index)
        return keep


class _Transform:
    """Petastorm TransformSpec function: rebuild a row group's files, decode them to tensors."""

    def __init__(
        self, reader: LakeReader, options: DecodeOptions, labels: dict[str, int], with_path: bool, shuffle: bool, seed: int | None
    ) -> None:
        self.reader, self.options, self.labels, self.with_path = reader, options, labels, with_path
        self.shuffle, self.seed = shuffle, seed
        self._rng = None

    def __call__(self, frame):
        import pandas as pd

        if self.shuffle and len(frame) > 1:
            # Rows are shuffled here, not with Petastorm's shuffle_rows: with a predicate, Petastorm
            # permutes the predicate columns and the other columns differently (rows would mix).
            if self._rng is None:
                self._rng = np.random.default_rng(self.seed)
            frame = frame.iloc[self._rng.permutation(len(frame))]
        rows = [
            {
                "dataset": d, "relative_path": p, "content_hash": h, "chunk_ids": list(ids), "size": s,
            }
            for d, p, h, ids, s in zip(
                frame["dataset"], frame["relative_path"], frame["content_hash"], frame["chunk_ids"], frame["size"]
            )
        ]
        size = int(np.prod(self.options.shape))
        flat = np.empty(len(rows) * size, np.float32)
        batch = flat.reshape((len(rows), *self.options.shape))
        for k, (_, data) in enumerate(self.reader.rebuild_many(rows)):
            decode_image(data, self.options, out=batch[k])  # straight into the row group's buffer
        # An Arrow-backed column: Petastorm's pa.Table.from_pandas takes it without copying,
        # where a column of numpy arrays costs about as much as decoding the images.
        offsets = pa.array(np.arange(len(rows) + 1, dtype=np.int32) * size)
        images = pd.arrays.ArrowExtensionArray(pa.ListArray.from_arrays(offsets, pa.array(flat)))
        labels = [self.labels.get(v, UNLABELED) if isinstance(v, str) else UNLABELED for v in frame["label"]]
        out = {"image": images, "label": np.asarray(labels, np.int64)}
        if self.with_path:
            out["relative_path"] = list(frame["relative_path"])
        return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------
# Petastorm


def manifest_files(lake: Lake, dataset: str) -> list[str]:
    """URLs of the current manifests files whose Delta stats can hold ``dataset``."""
    table_uri = lake.table_uri(MANIFESTS)
    stats = delta.file_stats(table_uri, lake.storage_options)
    root = table_uri.rstrip("/")
    lo = stats.column("min.dataset").to_pylist() if "min.dataset" in stats.column_names else [None] * stats.num_rows
    hi = stats.column("max.dataset").to_pylist() if "max.dataset" in stats.column_names else [None] * stats.num_rows
    urls = []
    for path, a, b in zip(stats.column("path").to_pylist(), lo, hi, strict=True):
        if a is not None and b is not None and not a <= dataset <= b:
            continue
        full = path if "://" in path or path.startswith("/") else f"{root}/{urllib.parse.unquote(path)}"
        urls.append("file://" + full if full.startswith("/") else full)
    return urls


def split_paths(lake: Lake, dataset: str, split: str) -> list[str]:
    """Relative paths of one split (reads only that column of the matching row groups)."""
    table = lake.arrow(
        MANIFESTS, columns=["relative_path"], filter=(pc.field("dataset") == dataset) & (pc.field("split") == split)
    )
    return table.column("relative_path").to_pylist()


def make_reader(
    lake: Lake | str,
    dataset: str,
    *,
    split: str = "train",
    image_size: int | tuple[int, int] = 224,
    channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cur_shard: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = 1,
    shuffle: bool = True,
    seed: int | None = None,
    workers: int = 4,
    pool: str = "thread",
    cache: bool | ChunkCache | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache_size: int | str | None = None,
    with_path: bool = False,
    results_queue_size: int = 50,
    storage_options: dict[str, str] | None = None,
):
    """A Petastorm batch reader of (image, label[, relative_path]) for one split (module doc).

    ``pool``: Petastorm's ``thread`` (default; Pillow and numpy release the GIL while decoding)
    or ``process`` pool, with ``workers`` workers. ``cache`` as in :class:`~cnnspark.rebuild.LakeReader`
    (on by default). Use it as a context manager, or call ``stop()`` and ``join()``.
    """
    from petastorm import make_batch_reader
    from petastorm.transform import TransformSpec

    lake = lake if isinstance(lake, Lake) else Lake(lake, storage_options=storage_options)
    lake.require()
    options = DecodeOptions(image_size=image_size, channels=channels, mean=mean, std=std)
    if (cur_shard is None) != (shard_count is None):
        raise ConfigError("pass cur_shard and shard_count together (or neither)")
    if shard_count is not None and not (shard_count >= 1 and 0 <= cur_shard < shard_count):
        raise ConfigError(f"cur_shard must be in [0, shard_count), got cur_shard={cur_shard} shard_count={shard_count}")
    paths = split_paths(lake, dataset, split)
    if not paths:
        raise LakeError(f"dataset {dataset!r} has no files in split {split!r} in the lake {lake.uri}")
    lo, hi = 0, 2**64
    if shard_count and shard_count > 1:
        if len(paths) < shard_count:
            raise ConfigError(
                f"split {split!r} of dataset {dataset!r} has {len(paths)} files, fewer than shard_count={shard_count}: "
                "some shards would get no data; use fewer shards (ranks) or a bigger split"
            )
        lo, hi = shard_ranges(paths, shard_count)[cur_shard]
    labels = label_mapping(lake, dataset)
    reader = LakeReader(lake, cache=resolve(cache, directory=cache_dir, max_bytes=cache_size))
    fields = [("image", np.float32, options.shape, False), ("label", np.int64, (), False)]
    selected = ["image", "label"]
    if with_path:
        fields.append(("relative_path", np.str_, (), False))
        selected.append("relative_path")
    spec = TransformSpec(_Transform(reader, options, labels, with_path, shuffle, seed), edit_fields=fields, selected_fields=selected)
    return make_batch_reader(
        manifest_files(lake, dataset),
        schema_fields=READ_COLUMNS,
        reader_pool_type=pool,
        workers_count=workers,
        results_queue_size=results_queue_size,
        shuffle_row_groups=shuffle,
        shuffle_rows=False,  # see _Transform
        seed=seed,
        num_epochs=num_epochs,
        predicate=_RowPredicate(dataset, split, lo, hi),
        transform_spec=spec,
    )


class _ColumnResults:
    """Petastorm's results-queue reader for ``make_batch_reader``, without its copies.

    Petastorm's own (``ArrowReaderWorkerResultsQueueReader``) turns a fixed-shape list column into
    pandas objects, one numpy array per row, and ``np.vstack``s them: two copies of every image
    plus per-row Python work, in the training process. Here the column's flat values become one
    (rows, *shape) array without a copy. The arrays are read-only views of the row group's Arrow
    buffers: :class:`_BatchLoader` copies rows out of them into the batches it hands over.
    """

    batched_output = True

    def read_next(self, workers_pool, schema, ngram):
        from petastorm.workers_pool import EmptyResultError

        try:
            table = workers_pool.get_results()
        except EmptyResultError:
            raise StopIteration from None
        columns = {}
        for name in table.column_names:
            column = table.column(name)
            array = column.chunks[0] if column.num_chunks == 1 else column.combine_chunks()
            shape = tuple(schema.fields[name].shape or ())
            if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
                values = array.flatten().to_numpy(zero_copy_only=False)
                if shape and None not in shape and values.size == len(array) * int(np.prod(shape)):
                    columns[name] = values.reshape((len(array), *shape))
                else:  # unknown shape: as petastorm does it
                    stacked = np.vstack(array.to_pandas().tolist())
                    columns[name] = stacked.reshape((len(array), *shape)) if len(shape) > 1 else stacked
            elif pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
                columns[name] = np.asarray(array.to_pylist(), dtype=np.str_)
            else:
                columns[name] = array.to_numpy(zero_copy_only=False)
        return schema.make_namedtuple(**columns)


def _use_column_results(reader) -> None:
    """Swap in :class:`_ColumnResults` where the reader is petastorm 0.12's batched Arrow reader."""
    from petastorm.arrow_reader_worker import ArrowReaderWorkerResultsQueueReader

    if isinstance(getattr(reader, "_results_queue_reader", None), ArrowReaderWorkerResultsQueueReader):
        reader._results_queue_reader = _ColumnResults()


class _RowBuffer:
    """Rows of column arrays waiting to become batches; each row is copied once into its batch.

    Without shuffling (``capacity`` 0) rows leave in order. With shuffling every batch is a uniform
    random draw from the buffered rows, and a batch is taken only while at least ``capacity - 1``
    rows stay behind (as in petastorm's row-wise ``DataLoader``); the rows drawn are refilled from
    the end of the buffer (swap-remove), so a batch costs O(batch), not O(buffer).
    """

    def __init__(self, batch_size: int, capacity: int, rng: np.random.Generator) -> None:
        self.batch_size, self.capacity, self.rng = batch_size, capacity, rng
        self.pending: list[tuple[dict[str, np.ndarray], int]] = []  # (columns, first unread row)
        self.store: dict[str, np.ndarray] | None = None  # shuffling: rows [0, size) are live
        self.size = 0
        self.done = False

    def add(self, columns: dict[str, np.ndarray]) -> None:
        rows = len(next(iter(columns.values())))
        if rows == 0:
            return
        if not self.capacity:
            self.pending.append((columns, 0))
        else:
            need = self.size + rows
            if self.store is None or need > len(next(iter(self.store.values()))):
                room = max(need, 2 * self.size, self.capacity + self.batch_size)
                grown = {k: np.empty((room, *v.shape[1:]), v.dtype) for k, v in columns.items()}
                if self.store is not None:
                    for k, v in self.store.items():
                        grown[k][: self.size] = v[: self.size]
                self.store = grown
            for k, v in columns.items():
                self.store[k][self.size : need] = v
        self.size += rows

    def ready(self) -> bool:
        if self.done:
            return self.size > 0
        return self.size >= max(self.capacity - 1, 0) + self.batch_size

    def take(self) -> dict[str, np.ndarray]:
        n = min(self.batch_size, self.size)
        if self.capacity:
            return self._draw(n)
        first = self.pending[0][0]
        out = {k: np.empty((n, *v.shape[1:]), v.dtype) for k, v in first.items()}
        filled = 0
        while filled < n:
            columns, at = self.pending[0]
            k = min(n - filled, len(next(iter(columns.values()))) - at)
            for name, v in columns.items():
                out[name][filled : filled + k] = v[at : at + k]
            filled += k
            if at + k == len(next(iter(columns.values()))):
                self.pending.pop(0)
            else:
                self.pending[0] = (columns, at + k)
        self.size -= n
        return out

    def _draw(self, n: int) -> dict[str, np.ndarray]:
        assert self.store is not None
        picked = self.rng.choice(self.size, size=n, replace=False)
        out = {k: v[picked] for k, v in self.store.items()}  # fancy indexing: a fresh copy
        rest = self.size - n
        holes = picked[picked < rest]
        if holes.size:
            movers = np.setdiff1d(np.arange(rest, self.size), picked, assume_unique=True)
            for v in self.store.values():
                v[holes] = v[movers]
        self.size = rest
        return out


@functools.cache
def _batch_loader_class():
    from petastorm.pytorch import LoaderBase

    class _BatchLoader(LoaderBase):
        """A torch loader over a batched Petastorm reader: whole row-group columns in, dicts of
        tensors out, each row copied once (into its batch), no per-row Python work."""

        def __init__(self, reader, batch_size: int = 1, shuffling_queue_capacity: int = 0, seed: int | None = None) -> None:
            super().__init__()
            if batch_size < 1:
                raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
            self.reader, self.batch_size = reader, batch_size
            self.shuffling_queue_capacity = max(0, int(shuffling_queue_capacity or 0))
            self._rng = np.random.default_rng(seed)

        def _iter_impl(self):
            import torch

            buffer = _RowBuffer(self.batch_size, self.shuffling_queue_capacity, self._rng)
            for row_group in self.reader:
                buffer.add(row_group._asdict())
                while buffer.ready():
                    yield {k: torch.from_numpy(v) for k, v in buffer.take().items()}
            buffer.done = True
            while buffer.ready():
                yield {k: torch.from_numpy(v) for k, v in buffer.take().items()}

        def __enter__(self):
            return self

        def __exit__(self, exc_type, exc_val, exc_tb):
            self.reader.stop()
            self.reader.join()

    return _BatchLoader


def make_torch_dataloader(
    lake: Lake | str,
    dataset: str,
    *,
    batch_size: int = 32,
    shuffling_queue_capacity: int = 0,
    **reader_args,
):
    """A torch loader over :func:`make_reader` (same arguments), with petastorm's loader interface.

    Batches are dicts ``{"image": float32 tensor (B, C, H, W), "label": int64 tensor (B,)}``; the
    last one may be smaller. Each Petastorm row group arrives as whole columns (no per-row
    unrolling and re-stacking, unlike ``petastorm.pytorch.DataLoader``), and each image is copied
    once, into its batch, which the caller then owns. ``shuffling_queue_capacity`` > 0 draws every
    batch uniformly at random from a buffer that keeps at least that many rows minus one until the
    reader is exhausted (the same rule as petastorm's ``DataLoader``; seeded by ``seed``). With
    ``shuffle`` on (the default) rows are also shuffled within each row group and row groups are
    read in random order. A second ``for`` loop over the loader resets the reader (another pass).
    Use it as a context manager so the reader's workers stop at the end.
    """
    if reader_args.get("with_path"):
        raise ConfigError("torch loaders cannot carry strings: leave with_path off for make_torch_dataloader")
    reader = make_reader(lake, dataset, **reader_args)
    _use_column_results(reader)
    return _batch_loader_class()(
        reader, batch_size=batch_size, shuffling_queue_capacity=shuffling_queue_capacity, seed=reader_args.get("seed")
    )


# ---------------------------------------------------------------------------------------------
# Spark-native


CONTENT_SCHEMA = pa.schema(
    [
        ("relative_path", pa.string()),
        ("split", pa.string()),
        ("label", pa.string()),
        ("label_index", pa.int64()),
        ("content", pa.binary()),
    ]
)


def _content_rebuilder(lake_uri: str, storage_options, labels: dict[str, int], cache_args: dict):
    def rebuild(batches):
        reader = LakeReader(Lake(lake_uri, storage_options=storage_options), **cache_args)
        for batch in batches:
            rows = batch.to_pylist()
            contents = [data for _, data in reader.rebuild_many(rows)]
            yield pa.RecordBatch.from_pydict(
                {
                    "relative_path": [r["relative_path"] for r in rows],
                    "split": [r["split"] for r in rows],
                    "label": [r["label"] for r in rows],
                    "label_index": [labels.get(r["label"], UNLABELED) if r["label"] is not None else UNLABELED for r in rows],
                    "content": contents,
                },
                schema=CONTENT_SCHEMA,
            )

    return rebuild


def spark_dataframe(
    spark: SparkSession,
    lake: Lake | str,
    dataset: str,
    *,
    split: str | None = None,
    cache: bool | None = None,
    cache_dir: str | None = None,
    cache_size: int | str | None = None,
) -> DataFrame:
    """A Spark DataFrame (relative_path, split, label, label_index, content) of the dataset's files,
    rebuilt in Spark tasks from the lake (each task batches its chunk lookups and uses the node
    cache of the executor's machine). Hand it to ``petastorm.spark.make_spark_converter`` and decode
    ``content`` with :func:`cnnspark.decode.decode_image` in the converter's TransformSpec.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    lake = lake if isinstance(lake, Lake) else Lake(lake)
    lake.require()
    labels = label_mapping(lake, dataset)
    frame = lake.dataframe(spark, MANIFESTS).filter(F.col("dataset") == dataset)
    if split is not None:
        frame = frame.filter(F.col("split") == split)
    frame = frame.select(*READ_COLUMNS)
    cache_args = {"cache": cache, "cache_dir": cache_dir, "cache_size": cache_size}
    return frame.mapInArrow(
        _content_rebuilder(lake.uri, lake.storage_options, labels, cache_args), from_arrow_schema(CONTENT_SCHEMA)
    )
