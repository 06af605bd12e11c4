"""The read path on a real lake: rebuild API, export, verify, the chunk cache, Petastorm readers,
torch loaders and the Spark-native DataFrame. One lake per module (two real Spark ingests)."""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import xxhash
from imagegen import image_folder, textured, write_image
from PIL import Image

from cnnspark.cache import ChunkCache
from cnnspark.chunking import chunk_key
from cnnspark.chunkstore import ChunkIndex
from cnnspark.data import label_mapping, make_reader, make_torch_dataloader, spark_dataframe
from cnnspark.decode import DecodeOptions, decode_image
from cnnspark.errors import IntegrityError, LakeError
from cnnspark.ingest import IngestOptions, ingest
from cnnspark.lake import Lake
from cnnspark.rebuild import open_lake
from cnnspark.tables import CHUNKS

CLI = str(Path(sys.executable).with_name("cnnspark"))
DATASET = "pets"
OPTS = DecodeOptions(image_size=(20, 28), channels=3)


def _odd_images(root: Path, rng: np.random.Generator) -> None:
    """Grayscale, RGBA, 16-bit PNG and TIFF, multi-page TIFF, a large noisy multi-chunk PNG, a duplicate."""
    write_image(root / "cat" / "gray.png", textured(rng, 40, 50, 1))
    write_image(root / "dog" / "rgba.png", textured(rng, 40, 50, 4))
    Image.fromarray(rng.integers(0, 65536, (30, 20)).astype(np.uint16)).save(root / "cat" / "g16.png")
    tifffile.imwrite(root / "dog" / "rgb16.tif", rng.integers(0, 65536, (24, 18, 3)).astype(np.uint16))
    tifffile.imwrite(root / "cat" / "multi.tif", np.stack([textured(rng, 32, 32, 3) for _ in range(3)]))
    write_image(root / "dog" / "noise.png", rng.integers(0, 256, (400, 400, 3), dtype=np.uint8))
    shutil.copy(root / "dog" / "noise.png", root / "dog" / "noise_copy.png")


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("readlake")
    train, val = base / "train", base / "val"
    image_folder(train, per_class=4, seed=1)
    _odd_images(train, np.random.default_rng(2))
    image_folder(val, classes=("cat", "dog", "owl"), per_class=1, seed=3)
    uri = str(base / "lake")
    for src, split in ((train, "train"), (val, "val")):
        ingest(spark, IngestOptions(source=str(src), lake=uri, dataset=DATASET, split=split), progress=None)
    return {"uri": uri, "train": train, "val": val, "base": base}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------------------
# Rebuild API, export, verify


def test_rebuild_api_reads_files_byte_exact(lake, tmp_path):
    reader = open_lake(lake["uri"], cache_dir=tmp_path / "cache")
    originals = _files(lake["train"])
    table = reader.manifests(DATASET, split="train")
    assert sorted(table.column("relative_path").to_pylist()) == sorted(originals)
    assert any(len(ids) > 1 for ids in table.column("chunk_ids").to_pylist()), "want a multi-chunk file"
    for row, data in reader.rebuild_many(table):
        assert data == originals[row["relative_path"]], row["relative_path"]
    assert reader.read_file(DATASET, "dog/noise.png") == originals["dog/noise.png"]
    assert reader.read_file(DATASET, "cat/cat_0.png", split="train") == originals["cat/cat_0.png"]
    with pytest.raises(LakeError, match="several splits"):
        reader.read_file(DATASET, "cat/cat_0.png")  # also in val
    with pytest.raises(LakeError, match="no file"):
        reader.read_file(DATASET, "cat/nope.png")


def test_lookup_prunes_to_one_row_group_per_id(lake):
    lk = Lake(lake["uri"])
    reader = open_lake(lk, cache=False)
    index = ChunkIndex(lk)
    total_groups = sum(pq.ParquetFile(f.removeprefix("file://")).metadata.num_row_groups for f in lk.files(CHUNKS))
    for path in ("dog/noise.png", "cat/cat_0.png"):
        row = reader.manifests(DATASET, split="train", paths=[path]).to_pylist()[0]
        located = index.locate(chunk_key(i) for i in row["chunk_ids"])
        assert 0 < len(located) <= len(row["chunk_ids"])
    assert len(row["chunk_ids"]) == 1 and len(located) == 1 < total_groups


def test_export_cli_is_byte_exact(lake, tmp_path):
    for split in ("train", "val"):
        out = tmp_path / split
        result = _cli("export", "--lake", lake["uri"], "--dataset", DATASET, "--split", split, "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert _files(out) == _files(lake[split])
    both = _cli("export", "--lake", lake["uri"], "--dataset", DATASET, "--out", str(tmp_path / "all"))
    assert both.returncode == 2 and "--split" in both.stderr


def test_verify_cli_passes_on_healthy_lake(lake):
    for _ in range(2):
        result = _cli("verify", "--lake", lake["uri"], "--dataset", DATASET)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OK" in result.stdout


def test_verify_detects_flipped_byte_and_names_files(lake, tmp_path):
    copy = tmp_path / "lake"
    shutil.copytree(lake["uri"], copy)
    reader = open_lake(str(copy), cache=False)
    row = reader.manifests(DATASET, paths=["dog/noise.png"]).to_pylist()[0]
    chunk = reader.fetch([row["chunk_ids"][1]])[row["chunk_ids"][1]]
    needle = chunk[len(chunk) // 2 : len(chunk) // 2 + 64]
    for uri in Lake(str(copy)).files(CHUNKS):
        path = Path(uri.removeprefix("file://"))
        raw = bytearray(path.read_bytes())
        at = raw.find(needle)
        if at >= 0:
            raw[at + 10] ^= 0xFF
            path.write_bytes(bytes(raw))
            break
    else:
        pytest.fail("chunk bytes not found verbatim in any chunks data file")
    for _ in range(2):
        result = _cli("verify", "--lake", str(copy))
        assert result.returncode == 1, result.stdout + result.stderr
        assert "dog/noise.png" in result.stdout and "dog/noise_copy.png" in result.stdout
        assert row["chunk_ids"][1].hex() in result.stdout
        assert "cat/cat_0.png" not in result.stdout
    with pytest.raises(IntegrityError, match="noise"):
        open_lake(str(copy), cache=False).read_file(DATASET, "dog/noise.png")


# ---------------------------------------------------------------------------------------------
# Cache


def test_cache_never_serves_corrupt_entries(lake, tmp_path):
    cache = ChunkCache(tmp_path / "c", max_bytes="64MiB")
    reader = open_lake(lake["uri"], cache=cache)
    original = (lake["train"] / "dog" / "noise.png").read_bytes()
    assert reader.read_file(DATASET, "dog/noise.png") == original  # fills the cache
    row = reader.manifests(DATASET, paths=["dog/noise.png"]).to_pylist()[0]
    first, second = row["chunk_ids"][0], row["chunk_ids"][1]
    assert cache.get(first) is not None
    # A flipped byte and a torn (truncated) entry: both detected, dropped, refetched.
    entry = cache.path(first)
    raw = bytearray(entry.read_bytes())
    raw[5] ^= 1
    entry.write_bytes(bytes(raw))
    cache.path(second).write_bytes(cache.path(second).read_bytes()[:100])
    assert cache.get(first) is None and not entry.exists()
    cache.path(first).write_bytes(bytes(raw))
    assert open_lake(lake["uri"], cache=cache).read_file(DATASET, "dog/noise.png") == original
    assert cache.get(first) is not None and cache.get(second) is not None
    assert not cache.put(first, b"wrong bytes")


def test_cache_is_bounded(tmp_path):
    cache = ChunkCache(tmp_path / "c", max_bytes=200_000)
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(10_000) for _ in range(60)]
    for b in blobs:
        assert cache.put(xxhash.xxh3_128_digest(b), b)
    cache.evict()
    assert cache.size() <= 200_000
    assert cache.get(xxhash.xxh3_128_digest(blobs[-1])) == blobs[-1]


def _fill_and_read(directory: str, seed: int) -> bool:
    cache = ChunkCache(directory, max_bytes=300_000)
    rng = np.random.default_rng(0)  # every process works on the same chunks
    blobs = [rng.bytes(5_000 + i) for i in range(100)]
    order = np.random.default_rng(seed).permutation(len(blobs))
    for i in order:
        cid = xxhash.xxh3_128_digest(blobs[i])
        cache.put(cid, blobs[i])
        got = cache.get(cid)
        if got is not None and got != blobs[i]:
            return False
    return True


def test_cache_shared_by_concurrent_processes(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        assert all(pool.starmap(_fill_and_read, [(str(tmp_path / "c"), s) for s in range(4)]))
    assert ChunkCache(tmp_path / "c", max_bytes=300_000).size() <= 300_000 * 1.5


def _fill_packs_and_read(directory: str, seed: int) -> bool:
    cache = ChunkCache(directory, max_bytes=6_000_000)
    rng = np.random.default_rng(0)  # every process works on the same chunks
    groups = [[rng.bytes(60_000 + i) for i in range(70)] for _ in range(4)]
    for g in np.random.default_rng(seed).permutation(len(groups)):
        chunks = {xxhash.xxh3_128_digest(b): b for b in groups[g]}
        cache.put_many(chunks)
        for k in range(len(groups)):
            wanted = {xxhash.xxh3_128_digest(b): b for b in groups[k]}
            if any(wanted[i] != data for i, data in cache.get_many(wanted).items()):
                return False
    return True


def test_cache_packs_bulk_fills_and_keeps_the_guarantees(tmp_path):
    rng = np.random.default_rng(1)
    blobs = [rng.bytes(80_000 + i) for i in range(64)]  # 64 chunks, 5 MiB: one bulk fill
    chunks = {xxhash.xxh3_128_digest(b): b for b in blobs}
    cache = ChunkCache(tmp_path / "c", max_bytes="64MiB")
    assert cache.put_many(chunks) == len(chunks)
    packs = sorted((tmp_path / "c" / "packs").glob("*.pack"))
    assert len(packs) == 1 and not any(cache.path(i).exists() for i in chunks)
    other = ChunkCache(tmp_path / "c", max_bytes="64MiB")  # another process's view
    first = next(iter(chunks))
    assert other.get_many(chunks) == chunks and other.get(first) == chunks[first]
    raw = bytearray(packs[0].read_bytes())
    raw[len(raw) // 3] ^= 1
    packs[0].write_bytes(bytes(raw))
    assert other.get_many(chunks) == {} and not packs[0].exists()  # whole pack dropped, nothing wrong served
    assert cache.put_many(chunks) == len(chunks) and ChunkCache(tmp_path / "c").get_many(chunks) == chunks
    packs = sorted((tmp_path / "c" / "packs").glob("*.pack"))
    packs[0].write_bytes(packs[0].read_bytes()[:1000])  # torn
    assert ChunkCache(tmp_path / "c").get_many(chunks) == {}
    assert not cache.put_many({b"x" * 16: b"wrong bytes"})
    small = ChunkCache(tmp_path / "s", max_bytes=12_000_000)
    for k in range(5):
        small.put_many({xxhash.xxh3_128_digest(b): b for b in (rng.bytes(90_000) for _ in range(50))})
    small.evict()
    assert small.size() <= 12_000_000


def test_cache_packs_shared_by_concurrent_processes(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        assert all(pool.starmap(_fill_packs_and_read, [(str(tmp_path / "c"), s) for s in range(3)]))
    assert ChunkCache(tmp_path / "c", max_bytes=6_000_000).size() <= 6_000_000 * 2


# ---------------------------------------------------------------------------------------------
# Decoding


def test_decode_channels_and_value_range(tmp_path):
    full16 = tmp_path / "w16.png"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(full16)
    tifffile.imwrite(tmp_path / "w16.tif", np.full((8, 8, 3), 65535, np.uint16))
    write_image(tmp_path / "gray.png", np.full((8, 8), 255, np.uint8))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    write_image(tmp_path / "rgba.png", rgba)
    pages = np.stack([np.full((8, 8), v, np.uint8) for v in (51, 102, 153)])
    tifffile.imwrite(tmp_path / "multi.tif", pages, photometric="minisblack")

    def dec(name, **kw):
        return decode_image((tmp_path / name).read_bytes(), image_size=8, **kw)

    assert np.allclose(dec("w16.png", channels=1), 1.0) and np.allclose(dec("w16.tif"), 1.0)
    assert dec("gray.png").shape == (3, 8, 8) and np.allclose(dec("gray.png"), 1.0)
    assert np.allclose(dec("gray.png", channels=4)[3], 1.0)
    four = dec("rgba.png", channels=4)
    assert np.allclose(four[0], 1.0) and np.allclose(four[1:3], 0.0) and np.allclose(four[3], 128 / 255)
    assert np.allclose(dec("rgba.png"), four[:3])
    assert np.allclose(dec("rgba.png", channels=1), 0.299, atol=1e-2)
    assert np.allclose(dec("multi.tif", channels=1), 0.2)  # the first page
    normed = dec("gray.png", mean=[0.5], std=[0.25])
    assert np.allclose(normed, 2.0)


# ---------------------------------------------------------------------------------------------
# Petastorm, torch, Spark


def test_label_mapping_is_stable_and_shared_by_splits(lake):
    mapping = label_mapping(lake["uri"], DATASET)
    assert mapping == {"cat": 0, "dog": 1, "owl": 2}
    assert label_mapping(lake["uri"], DATASET) == mapping
    assert (Path(lake["uri"]) / "_meta" / DATASET / "labels.json").is_file()


def test_shards_cover_the_split_exactly_once_with_original_tensors(lake, tmp_path):
    originals = _files(lake["train"])
    mapping = label_mapping(lake["uri"], DATASET)
    seen: list[str] = []
    for shard in range(2):
        mine = []
        with make_reader(
            lake["uri"], DATASET, split="train", image_size=OPTS.image_size, channels=3, cur_shard=shard, shard_count=2,
            with_path=True, workers=2, seed=shard, cache_dir=tmp_path / "cache",
        ) as reader:
            for batch in reader:
                assert batch.image.dtype == np.float32 and batch.image.shape[1:] == OPTS.shape
                for image, label, path in zip(batch.image, batch.label, batch.relative_path):
                    assert np.array_equal(image, decode_image(originals[str(path)], OPTS)), path
                    assert label == mapping[str(path).split("/")[0]]
                    mine.append(str(path))
        assert mine, f"shard {shard} got no data"
        seen += mine
    assert sorted(seen) == sorted(originals)


def test_torch_dataloader_two_epochs_warm_cache(lake, tmp_path):
    import torch

    n = len(_files(lake["val"]))
    with make_torch_dataloader(
        lake["uri"], DATASET, split="val", image_size=16, channels=1, batch_size=2, num_epochs=2, workers=2,
        pool="process", cache_dir=tmp_path / "cache",
    ) as loader:
        batches = list(loader)
    images = torch.cat([b["image"] for b in batches])
    labels = torch.cat([b["label"] for b in batches])
    assert images.shape == (2 * n, 1, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and sorted(labels.tolist()) == sorted([0, 1, 2] * 2)
    assert ChunkCache(tmp_path / "cache").size() > 0


def test_torch_dataloader_shuffling_buffer_yields_every_row_once(lake, tmp_path):
    import torch

    paths = sorted(_files(lake["train"]))
    mapping = label_mapping(lake["uri"], DATASET)
    expected = sorted(mapping[p.split("/")[0]] for p in paths)
    orders = []
    for seed in (1, 2):
        with make_torch_dataloader(
            lake["uri"], DATASET, split="train", image_size=8, channels=1, batch_size=4, shuffling_queue_capacity=6,
            workers=2, seed=seed, cache_dir=tmp_path / "cache",
        ) as loader:
            batches = list(loader)
        assert [len(b["label"]) for b in batches[:-1]] == [4] * (len(batches) - 1)
        labels = torch.cat([b["label"] for b in batches]).tolist()
        assert sorted(labels) == expected
        images = torch.cat([b["image"] for b in batches])
        assert images.shape == (len(paths), 1, 8, 8) and images.dtype == torch.float32
        batches[0]["image"].add_(1.0)  # batches are the caller's own, writable tensors
        orders.append(images.sum(dim=(1, 2, 3)).tolist())
    assert sorted(orders[0]) == pytest.approx(sorted(orders[1]), abs=1e-4)


def test_spark_dataframe_rebuilds_contents(lake, spark, tmp_path):
    frame = spark_dataframe(spark, lake["uri"], DATASET, split="val", cache_dir=str(tmp_path / "cache"))
    rows = {r["relative_path"]: r for r in frame.collect()}
    originals = _files(lake["val"])
    assert sorted(rows) == sorted(originals)
    for path, row in rows.items():
        assert bytes(row["content"]) == originals[path]
        assert row["label_index"] == {"cat": 0, "dog": 1, "owl": 2}[row["label"]]


def test_reader_refuses_more_shards_than_files(lake):
    from cnnspark.errors import ConfigError

    with pytest.raises(ConfigError, match="fewer than shard_count"):
        make_reader(lake["uri"], DATASET, split="val", cur_shard=0, shard_count=50)
