"""The Spark ingest job end to end: real local Spark, real Delta tables, real image files."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import tifffile
from deltalake import DeltaTable

from cnnspark import chunkstore
from cnnspark.chunking import ChunkingParams, split
from cnnspark.errors import ConfigError, SourceError
from cnnspark.ingest import IngestOptions, ingest
from cnnspark.lake import Lake
from imagegen import image_folder, textured, write_image

CLI = str(Path(sys.executable).with_name("cnnspark"))


def run_ingest(spark, source, lake, dataset, **kw):
    return ingest(spark, IngestOptions(source=str(source), lake=str(lake), dataset=dataset, **kw), progress=None)


def manifests(lake: Lake, dataset: str) -> dict[str, dict]:
    rows = lake.arrow("manifests", filter=pc.field("dataset") == dataset).to_pylist()
    return {r["relative_path"]: r for r in rows}


def assert_rebuilds(lake: Lake, dataset: str, source: Path) -> int:
    """Every manifest of ``dataset`` rebuilds byte for byte from the chunks table."""
    rows = manifests(lake, dataset)
    assert rows
    for rel, row in rows.items():
        data = chunkstore.rebuild(row, chunkstore.fetch(lake, row["chunk_ids"]))
        assert data == (source / rel).read_bytes(), rel
    return len(rows)


def chunk_count(lake: Lake) -> int:
    return lake.arrow("chunks", columns=["id"]).num_rows


@pytest.fixture(scope="module")
def dataset_v1(tmp_path_factory) -> Path:
    """ImageFolder of PNG/TIFF/JPEG/BMP, a large TIFF, an exact copy, and bad files."""
    root = tmp_path_factory.mktemp("v1")
    image_folder(root, per_class=4, size=(120, 160))
    rng = np.random.default_rng(3)
    write_image(root / "cat" / "scan_big.tif", textured(rng, 700, 900, channels=3))  # ~1.9 MB: many chunks
    write_image(root / "dog" / "gray16.tif", (textured(rng, 200, 200, channels=1).astype(np.uint16) * 257))
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tif:  # a multi-page TIFF, one page per write
        for _ in range(3):
            tif.write(textured(rng, 64, 64, 1))
    (root / "dog" / "pages.tif").write_bytes(buf.getvalue())
    shutil.copy(root / "cat" / "scan_big.tif", root / "dog" / "scan_big_copy.tif")
    # Files that must land in quarantine, next to the good ones.
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "cat" / "notes.png").write_text("not an image at all\n")
    good_png = (root / "cat" / "cat_0.png").read_bytes()
    (root / "dog" / "cut.png").write_bytes(good_png[: len(good_png) // 2])
    bad_crc = bytearray(good_png)
    bad_crc[29] ^= 0xFF  # inside the IHDR CRC
    (root / "dog" / "badcrc.png").write_bytes(bytes(bad_crc))
    return root


QUARANTINED = {
    "cat/empty.png": "zero_bytes",
    "cat/notes.png": "not_an_image",
    "dog/cut.png": "truncated",
    "dog/badcrc.png": "corrupt_header",
}


@pytest.fixture(scope="module")
def lake_v1(spark, dataset_v1, tmp_path_factory):
    lake_dir = tmp_path_factory.mktemp("lake")
    summary = run_ingest(spark, dataset_v1, lake_dir, "pets-v1")
    return Lake(str(lake_dir)), summary


def test_first_ingest_summary_counts(lake_v1, dataset_v1):
    _, summary = lake_v1
    files = [p for p in dataset_v1.rglob("*") if p.is_file()]
    assert summary.files_seen == len(files)
    assert summary.files_quarantined == len(QUARANTINED)
    assert summary.files_ingested == len(files) - len(QUARANTINED)
    good_bytes = sum(p.stat().st_size for p in files if str(p.relative_to(dataset_v1)) not in QUARANTINED)
    assert summary.logical_bytes == good_bytes
    # The exact copy of scan_big.tif costs no chunks: physical = unique chunk bytes.
    cdc = ChunkingParams().chunker()
    unique = {}
    for p in files:
        if str(p.relative_to(dataset_v1)) not in QUARANTINED:
            for cid, piece in split(p.read_bytes(), cdc):
                unique[cid] = len(piece)
    assert summary.new_chunks == len(unique)
    assert summary.new_physical_bytes == sum(unique.values())
    assert summary.new_physical_bytes < summary.logical_bytes
    assert summary.lake_dedup_ratio == pytest.approx(good_bytes / sum(unique.values()), rel=1e-3)


def test_every_file_rebuilds_byte_for_byte(lake_v1, dataset_v1):
    lake, _ = lake_v1
    assert assert_rebuilds(lake, "pets-v1", dataset_v1) == 12


def test_manifest_metadata_comes_from_headers(lake_v1, dataset_v1):
    lake, summary = lake_v1
    rows = manifests(lake, "pets-v1")
    big = rows["cat/scan_big.tif"]
    assert (big["format"], big["width"], big["height"], big["channels"], big["bit_depth"]) == ("tiff", 900, 700, 3, 8)
    assert big["label"] == "cat" and big["split"] == "train"
    assert rows["dog/gray16.tif"]["bit_depth"] == 16 and rows["dog/gray16.tif"]["channels"] == 1
    assert rows["dog/pages.tif"]["pages"] == 3
    assert rows["cat/cat_1.tif"]["format"] == "tiff"
    assert rows["dog/dog_2.jpg"]["format"] == "jpeg"
    assert rows["dog/dog_3.bmp"]["format"] == "bmp"
    assert {r["ingest_run"] for r in rows.values()} == {summary.run_id}
    assert all(r["ingested_at"].tzinfo is not None for r in rows.values())
    assert big["chunker"] == "fastcdc2020-nc1/16384/65536/262144"
    # The same bytes under two paths: two manifests, one set of chunks.
    assert rows["dog/scan_big_copy.tif"]["chunk_ids"] == big["chunk_ids"]
    assert rows["dog/scan_big_copy.tif"]["content_hash"] == big["content_hash"]
    assert len(big["chunk_ids"]) > 5


def test_bad_files_land_in_quarantine_with_their_reason(lake_v1):
    lake, _ = lake_v1
    rows = lake.arrow("quarantine").to_pylist()
    assert {r["relative_path"]: r["reason"] for r in rows} == QUARANTINED
    assert all(r["detail"] and r["dataset"] == "pets-v1" for r in rows)
    assert not set(QUARANTINED) & set(manifests(lake, "pets-v1"))


def test_chunks_table_is_unique_sorted_and_zstd(lake_v1):
    lake, _ = lake_v1
    ids = lake.arrow("chunks", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids))
    import pyarrow.parquet as pq

    for f in lake.files("chunks"):
        meta = pq.ParquetFile(f).metadata
        assert meta.row_group(0).column(3).compression == "ZSTD"
        keys = pq.read_table(f, columns=["key"]).column("key").to_pylist()
        assert keys == sorted(keys)


def test_tables_read_back_with_deltalake_and_spark(lake_v1, spark):
    lake, _ = lake_v1
    for name in ("chunks", "manifests", "quarantine"):
        table = DeltaTable(lake.table_uri(name))
        assert table.protocol().min_reader_version == 1 and table.protocol().min_writer_version == 2
        via_delta = pa.dataset.dataset(table.file_uris(), format="parquet").count_rows()
        via_spark = lake.dataframe(spark, name).count()
        assert via_delta == via_spark == lake.arrow(name).num_rows > 0
    stats = pa.table(DeltaTable(lake.table_uri("chunks")).get_add_actions(flatten=True))
    assert "min.key" in stats.column_names and "max.key" in stats.column_names


def test_rerun_is_a_noop(spark, lake_v1, dataset_v1):
    lake, _ = lake_v1
    versions = {n: lake.version(n) for n in ("chunks", "manifests", "quarantine")}
    again = run_ingest(spark, dataset_v1, lake.uri, "pets-v1")
    assert (again.files_ingested, again.new_chunks, again.files_unchanged) == (0, 0, 12)
    assert {n: lake.version(n) for n in versions} == versions
    assert "nothing new" in again.render()


def test_second_version_adds_only_new_chunks_and_replaces_changed_files(spark, lake_v1, dataset_v1, tmp_path):
    lake, _ = lake_v1
    v2 = tmp_path / "v2"
    shutil.copytree(dataset_v1, v2)
    for name in QUARANTINED:
        (v2 / name).unlink()
    rng = np.random.default_rng(11)
    added = write_image(v2 / "bird" / "bird_0.png", textured(rng, 100, 100))
    big = (v2 / "cat" / "scan_big.tif").read_bytes()
    edited = bytearray(big)
    edited[len(big) // 2 : len(big) // 2 + 16] = b"\x00" * 16  # pixels edited in the middle
    (v2 / "cat" / "scan_big.tif").write_bytes(bytes(edited))
    chunks_before = chunk_count(lake)
    cdc = ChunkingParams().chunker()
    expected_new = {cid for cid, _ in split(bytes(edited), cdc)} | {cid for cid, _ in split(added.read_bytes(), cdc)}
    expected_new -= set(lake.arrow("chunks", columns=["id"]).column("id").to_pylist())

    # A second version as its own dataset: only the chunks the lake lacks are added.
    s = run_ingest(spark, v2, lake.uri, "pets-v2")
    assert s.files_new == 13 and 0 < s.new_chunks == len(expected_new) <= 3
    assert chunk_count(lake) == chunks_before + len(expected_new)
    assert assert_rebuilds(lake, "pets-v2", v2) == 13

    # Re-ingesting v2's bytes into v1's name: changed file replaced, new file added, rest unchanged.
    s = run_ingest(spark, v2, lake.uri, "pets-v1")
    assert (s.files_new, s.files_changed, s.files_unchanged, s.new_chunks) == (1, 1, 11, 0)
    rows = manifests(lake, "pets-v1")
    assert len(rows) == 13  # the old scan_big.tif row is gone, not duplicated
    assert_rebuilds(lake, "pets-v1", v2)


def test_labels_from_csv_and_none(spark, tmp_path):
    src = tmp_path / "flat"
    rng = np.random.default_rng(5)
    for i in range(3):
        write_image(src / f"img{i}.png", textured(rng, 32, 32))
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nimg0.png,good\n./img1.png,bad\n")
    lake = tmp_path / "lake"
    run_ingest(spark, src, lake, "flat", labels=f"csv:{labels}", split="test")
    rows = manifests(Lake(str(lake)), "flat")
    assert {k: v["label"] for k, v in rows.items()} == {"img0.png": "good", "img1.png": "bad", "img2.png": None}
    assert {v["split"] for v in rows.values()} == {"test"}
    run_ingest(spark, str(src / "img*.png"), lake, "flat-glob", labels="none", max_file_size=500)
    q = Lake(str(lake)).arrow("quarantine", filter=pc.field("dataset") == "flat-glob").to_pylist()
    big = [p.name for p in src.glob("*.png") if p.stat().st_size > 500]
    assert sorted(r["relative_path"] for r in q if r["reason"] == "too_large") == sorted(big)


def test_bad_input_errors_are_clear(spark, tmp_path):
    with pytest.raises(SourceError, match="cannot list ingest source"):
        run_ingest(spark, tmp_path / "missing", tmp_path / "lake", "x")
    with pytest.raises(ConfigError, match="--labels must be"):
        IngestOptions(source="a", lake="b", dataset="c", labels="folder")
    with pytest.raises(ConfigError, match="--dataset"):
        IngestOptions(source="a", lake="b", dataset="")


def test_cli_json_and_exit_codes(tmp_path):
    src = tmp_path / "src"
    image_folder(src, per_class=1, size=(40, 40))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    outputs = []
    for _ in range(2):
        p = subprocess.run(
            [CLI, "ingest", str(src), "--lake", str(tmp_path / "lake"), "--dataset", "cli", "--json"],
            capture_output=True, text=True, env=env, timeout=300,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        outputs.append(json.loads(p.stdout))
    assert outputs[0]["files_ingested"] == 2 and outputs[1]["files_ingested"] == 0
    assert outputs[1]["files_unchanged"] == 2
    bad = subprocess.run(
        [CLI, "ingest", str(tmp_path / "nope"), "--lake", str(tmp_path / "lake"), "--dataset", "cli"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert bad.returncode == 2
    assert "cannot list ingest source" in bad.stderr and "Traceback" not in bad.stderr
