"""Tests for cnnspark.sql / cnnspark.stats and the ``stats`` and ``sql`` commands.

One lake is built from real image files with known duplication:

* ``photos-v1/train``: unique TIFF and PNG files, two files that share most of their pixels (so
  they share chunks without being identical), and identical copies at other paths;
* ``photos-v1/test``: unique files plus files planted from train (one under another label);
* ``photos-v2/train``: v1's train with two files changed in a small patch, one removed, one added.

Every expected number is computed here from the source files alone: FastCDC cut points and
XXH3 ids from cnnspark.chunking, then sums and counts in plain Python.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from imagegen import textured, write_image

from cnnspark import stats
from cnnspark.chunking import ChunkingParams, chunk_id, content_hash, cut_points
from cnnspark.errors import ConfigError
from cnnspark.ingest import IngestOptions, ingest
from cnnspark.sql import VIEWS, QueryError

PARAMS = ChunkingParams(min_size=2048, avg_size=8192, max_size=32768)
CLI = str(Path(sys.executable).with_name("cnnspark"))
SOURCES = (("photos-v1", "train"), ("photos-v1", "test"), ("photos-v2", "train"))


@dataclass(frozen=True)
class SourceFile:
    dataset: str
    split: str
    path: str
    label: str | None
    size: int
    content_hash: bytes
    chunks: tuple[tuple[bytes, int], ...]  # (id, size) in file order


def _patch(arr: np.ndarray, rows: slice, seed: int) -> np.ndarray:
    out = arr.copy()
    out[rows] = textured(np.random.default_rng(seed), out[rows].shape[0], out.shape[1])
    return out


def build_sources(root: Path) -> dict[tuple[str, str], Path]:
    """The three source folders of the scenario (see the module docstring)."""
    rng = np.random.default_rng(7)
    v1 = root / "v1-train"
    images = {}
    for i in range(5):
        images[f"cat/img{i}.tif"] = textured(rng, 96, 128)
    for i in range(5, 7):
        images[f"dog/img{i}.png"] = textured(rng, 96, 128)
    background = textured(rng, 128, 128)
    images["dog/bg_a.tif"] = _patch(background, slice(110, 128), 1)
    images["dog/bg_b.tif"] = _patch(background, slice(110, 128), 2)
    for rel, arr in images.items():
        write_image(v1 / rel, arr)
    shutil.copyfile(v1 / "cat/img0.tif", v1 / "dog/copy_of_img0.tif")
    shutil.copyfile(v1 / "cat/img1.tif", v1 / "cat/img1_again.tif")

    test = root / "v1-test"
    for i in range(2):
        write_image(test / f"cat/t{i}.tif", textured(rng, 96, 128))
    write_image(test / "dog/t2.png", textured(rng, 96, 128))
    shutil.copyfile(v1 / "cat/img0.tif", test / "cat/leak_img0.tif")  # two copies in train
    shutil.copyfile(v1 / "dog/img5.png", test / "cat/leak_img5.png")  # same image, other label

    v2 = root / "v2-train"
    shutil.copytree(v1, v2)
    write_image(v2 / "cat/img2.tif", _patch(images["cat/img2.tif"], slice(40, 44), 3))
    write_image(v2 / "cat/img3.tif", _patch(images["cat/img3.tif"], slice(80, 82), 4))
    (v2 / "cat/img4.tif").unlink()
    write_image(v2 / "dog/img9.tif", textured(rng, 96, 128))
    return {("photos-v1", "train"): v1, ("photos-v1", "test"): test, ("photos-v2", "train"): v2}


def scan_sources(sources: dict[tuple[str, str], Path]) -> list[SourceFile]:
    """Each source file with its content hash and chunks, computed straight from its bytes."""
    cdc = PARAMS.chunker()
    files = []
    for (dataset, split), folder in sources.items():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            rel = path.relative_to(folder).as_posix()
            chunks = tuple((chunk_id(data[o : o + n]), n) for o, n in cut_points(data, cdc))
            assert sum(n for _, n in chunks) == len(data)
            label = rel.split("/")[0] if "/" in rel else None
            files.append(SourceFile(dataset, split, rel, label, len(data), content_hash(data), chunks))
    return files


def expected_stats(files: list[SourceFile], stored_total: int) -> dict[tuple[str, str, str], dict]:
    """dedup_stats rows keyed by (scope, dataset, split), computed in plain Python."""
    payload_total = sum({cid: n for f in files for cid, n in f.chunks}.values())

    def row(scope_files: list[SourceFile], exclusive_ids: set[bytes]) -> dict:
        distinct = {cid: n for f in scope_files for cid, n in f.chunks}
        logical = sum(f.size for f in scope_files)
        physical = sum(distinct.values())
        return {
            "files": len(scope_files),
            "logical_bytes": logical,
            "unique_chunks": len(distinct),
            "physical_bytes": physical,
            "exclusive_chunks": len(exclusive_ids),
            "exclusive_bytes": sum(distinct[c] for c in exclusive_ids),
            "stored_bytes": round(physical * stored_total / payload_total),
            "dedup_ratio": logical / physical,
            "savings_percent": 100 * (1 - physical / logical),
        }

    def ids(fs: list[SourceFile]) -> set[bytes]:
        return {cid for f in fs for cid, _ in f.chunks}

    out = {}
    splits = sorted({(f.dataset, f.split) for f in files})
    for d, s in splits:
        mine = [f for f in files if (f.dataset, f.split) == (d, s)]
        others = [f for f in files if (f.dataset, f.split) != (d, s)]
        out[("split", d, s)] = row(mine, ids(mine) - ids(others))
    for d in sorted({f.dataset for f in files}):
        mine = [f for f in files if f.dataset == d]
        others = [f for f in files if f.dataset != d]
        out[("dataset", d, "*")] = row(mine, ids(mine) - ids(others))
    lake = row(files, ids(files))
    lake["stored_bytes"] = stored_total
    out[("lake", "*", "*")] = lake
    return out


def expected_overlap(files: list[SourceFile]) -> set[tuple]:
    """Every unordered pair of identical files in different (dataset, split) scopes."""
    pairs = set()
    for a, b in itertools.permutations(files, 2):
        if a.content_hash != b.content_hash:
            continue
        if a.dataset == b.dataset and a.split < b.split:
            kind = "cross_split"
        elif a.dataset < b.dataset:
            kind = "cross_dataset"
        else:
            continue
        pairs.add((kind, a.content_hash, a.size, a.dataset, a.split, a.path, a.label, b.dataset, b.split, b.path, b.label))
    return pairs


def chunks_on_disk(lake: Path) -> int:
    """Bytes of the chunks table's current files, from the Delta log via deltalake and os.stat."""
    from deltalake import DeltaTable

    return sum(os.path.getsize(u.removeprefix("file://")) for u in DeltaTable(str(lake / "chunks")).file_uris())


def ingest_all(spark, sources: dict[tuple[str, str], Path], lake: Path) -> None:
    for (dataset, split), folder in sources.items():
        ingest(spark, IngestOptions(source=str(folder), lake=str(lake), dataset=dataset, split=split, chunking=PARAMS), progress=None)


@pytest.fixture(scope="module")
def scenario(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    sources = build_sources(root / "src")
    lake = root / "lake"
    ingest_all(spark, sources, lake)
    stats.open_lake(spark, str(lake))
    rows = stats.dedup_stats(spark)
    return {"lake": lake, "sources": sources, "files": scan_sources(sources), "rows": rows}


def test_scenario_has_the_planned_duplication(scenario):
    files = scenario["files"]
    hashes = [f.content_hash for f in files]
    assert len(hashes) > len(set(hashes))  # identical files exist
    bg = [f for f in files if f.path.startswith("dog/bg_") and f.dataset == "photos-v1"]
    shared = set(bg[0].chunks) & set(bg[1].chunks)
    assert shared and bg[0].content_hash != bg[1].content_hash  # near-duplicates share chunks
    assert all(len(f.chunks) >= 2 for f in files)


def test_dedup_stats_equal_values_computed_from_the_sources(spark, scenario):
    expected = expected_stats(scenario["files"], chunks_on_disk(scenario["lake"]))
    got = {(r["scope"], r["dataset"], r["split"]): r for r in scenario["rows"]}
    assert set(got) == set(expected)
    for key, want in expected.items():
        row = got[key]
        for column, value in want.items():
            if isinstance(value, float):
                assert row[column] == pytest.approx(value, rel=1e-12), (key, column)
            elif column == "stored_bytes":
                assert abs(row[column] - value) <= 1, (key, column)
            else:
                assert row[column] == value, (key, column)
    # Train splits, datasets and the lake save something here, so the ratios are real checks.
    assert all(r["dedup_ratio"] > 1 for r in scenario["rows"] if r["split"] in ("train", "*"))


def test_physical_bytes_never_exceed_logical_and_shared_chunks_count_per_dataset(scenario):
    rows = scenario["rows"]
    for r in rows:
        assert 0 < r["physical_bytes"] <= r["logical_bytes"]
        assert r["exclusive_bytes"] <= r["physical_bytes"]
        assert r["stored_bytes"] > 0
    lake = next(r for r in rows if r["scope"] == "lake")
    per_dataset = [r for r in rows if r["scope"] == "dataset"]
    assert sum(r["physical_bytes"] for r in per_dataset) > lake["physical_bytes"]  # v1 and v2 share chunks
    assert sum(r["logical_bytes"] for r in per_dataset) == lake["logical_bytes"]
    assert sum(r["files"] for r in per_dataset) == lake["files"]


def test_row_order_and_dataset_filter(spark, scenario):
    rows = scenario["rows"]
    assert [(r["scope"], r["dataset"], r["split"]) for r in rows] == [
        ("dataset", "photos-v1", "*"), ("split", "photos-v1", "test"), ("split", "photos-v1", "train"),
        ("dataset", "photos-v2", "*"), ("split", "photos-v2", "train"), ("lake", "*", "*"),
    ]
    only = stats.dedup_stats(spark, "photos-v2")
    assert only == [r for r in rows if r["dataset"] == "photos-v2"]
    with pytest.raises(ConfigError, match="photos-v1"):
        stats.dedup_stats(spark, "nope")


def test_content_overlap_equals_pairs_computed_from_the_sources(spark, scenario):
    want = expected_overlap(scenario["files"])
    got = {
        (r.kind, bytes(r.content_hash), r.size, r.dataset_a, r.split_a, r.path_a, r.label_a, r.dataset_b, r.split_b, r.path_b, r.label_b)
        for r in spark.table("content_overlap").collect()
    }
    assert spark.table("content_overlap").count() == len(got)  # no duplicate rows
    assert got == want
    leaks = {(p[4], p[5], p[8], p[9]) for p in want if p[0] == "cross_split"}  # split_a < split_b: test, then train
    assert leaks == {
        ("test", "cat/leak_img0.tif", "train", "cat/img0.tif"),
        ("test", "cat/leak_img0.tif", "train", "dog/copy_of_img0.tif"),
        ("test", "cat/leak_img5.png", "train", "dog/img5.png"),
    }


def test_chunk_refs_and_chunks_views(spark, scenario):
    files = scenario["files"]
    refs = spark.table("chunk_refs").collect()
    want = {(f.dataset, f.split, f.path, f.content_hash, i, cid, n) for f in files for i, (cid, n) in enumerate(f.chunks)}
    got = {(r.dataset, r.split, r.relative_path, bytes(r.content_hash), r.position, bytes(r.chunk_id), r.chunk_size) for r in refs}
    assert len(refs) == len(want) and got == want
    chunks = spark.table("chunks")
    assert chunks.columns == ["id", "key", "size"]
    distinct = {cid: n for f in files for cid, n in f.chunks}
    assert {(bytes(r.id), r.size) for r in chunks.collect()} == set(distinct.items())
    assert spark.table("quarantine").count() == 0


def test_views_never_read_chunk_bytes(spark, scenario):
    for name in VIEWS:
        plan = spark.table(name)._jdf.queryExecution().executedPlan().toString()
        assert "data:binary" not in plan, name


def test_chunk_data_only_when_asked(spark, scenario):
    try:
        stats.open_lake(spark, str(scenario["lake"]), include_chunk_data=True)
        row = spark.sql("SELECT id, data FROM chunks LIMIT 1").first()
        assert len(row.data) > 0
    finally:
        stats.open_lake(spark, str(scenario["lake"]))
    assert "data" not in spark.table("chunks").columns


def test_query_errors_are_one_line(spark, scenario):
    with pytest.raises(QueryError) as e:
        stats.run_query(spark, "SELEC * FORM dedup_stats")
    assert "\n" not in str(e.value) and "PARSE_SYNTAX_ERROR" in str(e.value)
    with pytest.raises(QueryError, match="dedup_stats"):
        stats.run_query(spark, "SELECT * FROM no_such_view")


def test_run_query_limits_and_formats(spark, scenario):
    result = stats.run_query(spark, "SELECT dataset, split, files FROM dedup_stats WHERE scope = 'split' ORDER BY dataset, split", max_rows=2)
    assert result.truncated and len(result.rows) == 2
    text = result.render()
    lines = text.splitlines()
    assert lines[0].split() == ["dataset", "split", "files"] and "more not shown" in lines[-1]
    assert len({len(line) for line in lines[:4]}) == 1  # aligned columns
    full = stats.run_query(spark, "SELECT content_hash FROM manifests LIMIT 1")
    assert len(json.loads(stats.to_json(full.rows))[0]["content_hash"]) == 32  # hex


def test_format_table_aligns_and_escapes():
    text = stats.format_table(["name", "n"], [["a\nb", 1], ["ccc", 12345], [None, None]])
    assert text.splitlines() == ["name      n", "----  -----", "a\\nb      1", "ccc   12345", "NULL   NULL"]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], check=False, capture_output=True, text=True, timeout=180)


def test_cli_stats_json_twice_and_bad_sql(scenario):
    lake = str(scenario["lake"])
    want = json.loads(stats.to_json(scenario["rows"]))
    for _ in range(2):
        done = _run_cli("stats", "--lake", lake, "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout) == want
    bad = _run_cli("sql", "--lake", lake, "SELEC * FORM dedup_stats")
    assert bad.returncode == 2, bad.stderr[-3000:]
    errors = [line for line in bad.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("cnnspark sql: error: query failed: [PARSE_SYNTAX_ERROR]")
    assert "Traceback" not in bad.stderr and "at org.apache" not in bad.stderr
    assert bad.stdout == ""


def test_cli_missing_lake_exits_2_without_spark(tmp_path):
    done = _run_cli("stats", "--lake", str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert "no cnnspark lake" in done.stderr and "cnnspark ingest" in done.stderr


def test_cli_in_process_stats_and_sql(spark, scenario, capsys):
    from cnnspark.cli import main

    lake = str(scenario["lake"])
    assert main(["stats", "--lake", lake, "--dataset", "photos-v1"]) == 0
    out = capsys.readouterr().out
    assert "photos-v1" in out and "photos-v2" not in out
    query = "SELECT kind, path_a, path_b, label_a, label_b FROM content_overlap WHERE kind = 'cross_split' ORDER BY path_b"
    assert main(["sql", "--lake", lake, "--json", query]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path_b"] for r in rows] == ["cat/img0.tif", "dog/copy_of_img0.tif", "dog/img5.png"]
    assert [(r["label_a"], r["label_b"]) for r in rows][-1] == ("cat", "dog")  # planted under another label
    assert main(["sql", "--lake", lake, query]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "(3 rows)"
    assert main(["sql", "--lake", lake, "   "]) == 2


def test_ingesting_again_reports_the_same_numbers(spark, scenario):
    """Runs last in this module: it re-ingests every source into the shared lake."""
    before = scenario["rows"]
    overlap_before = spark.table("content_overlap").count()
    ingest_all(spark, scenario["sources"], scenario["lake"])
    stats.open_lake(spark, str(scenario["lake"]))
    assert stats.dedup_stats(spark) == before
    assert spark.table("content_overlap").count() == overlap_before
