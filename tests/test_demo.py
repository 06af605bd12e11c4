"""The demo collection (real files, formats, how v2 relates to v1, a learnable class task), the
demo's clean-up guard and CLI flags, and the notebooks and deployment files being valid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnspark.demo import COLLECTION_FILE, build_collection, clean_demo
from cnnspark.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return build_collection(tmp_path_factory.mktemp("demo") / "collection")


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def test_real_png_and_tiff_files_in_imagefolder_layout(collection):
    for version in (collection.v1, collection.v2):
        files = _files(Path(version))
        assert {rel.split("/")[0] for rel in files} == {"train", "val", "unlabeled"}
        suffixes = {p.suffix for p in files.values()}
        assert suffixes == {".png", ".tif"}
        for rel, path in files.items():
            head = path.read_bytes()[:8]
            if path.suffix == ".png":
                assert head == PNG_MAGIC, rel
            else:
                assert head[:4] in TIFF_MAGIC, rel
        # every file decodes; digits are 32x32 grayscale, in both formats
        for split in ("train", "val"):
            digits = [p for rel, p in files.items() if rel.startswith(split + "/")]
            assert {p.suffix for p in digits} == {".png", ".tif"}
            for path in digits[:: max(1, len(digits) // 40)]:
                with Image.open(path) as im:
                    assert im.size == (32, 32) and im.mode == "L"
        big = [p for rel, p in files.items() if rel.startswith("unlabeled/") and p.suffix == ".tif"]
        assert len(big) >= 8
        assert all(p.stat().st_size > 100_000 for p in big)
        for path in big:
            with Image.open(path) as im:
                im.load()
                assert im.info.get("compression", "raw") == "raw"  # uncompressed: dedups below file level


def test_a_class_task_a_cnn_can_learn(collection):
    assert collection.classes == [str(d) for d in range(10)]
    for version in (collection.v1, collection.v2):
        for split in ("train", "val"):
            labels = sorted(p.name for p in (Path(version) / split).iterdir() if p.is_dir())
            assert labels == collection.classes
            counts = [sum(1 for _ in (Path(version) / split / label).iterdir()) for label in labels]
            assert min(counts) >= (20 if split == "train" else 5)
    # the classes really differ: mean images of two digits are far apart
    v1 = Path(collection.v1) / "train"
    means = []
    for label in ("0", "1"):
        stack = [np.asarray(Image.open(p), np.float32) for p in sorted((v1 / label).iterdir())[:30]]
        means.append(np.mean(stack, axis=0))
    assert np.abs(means[0] - means[1]).mean() > 10


def test_v2_copies_changes_adds_and_removes_files(collection):
    v1, v2 = _files(Path(collection.v1)), _files(Path(collection.v2))
    assert collection.copied and collection.changed and collection.added and collection.removed
    for rel in collection.copied:
        assert v1[rel].read_bytes() == v2[rel].read_bytes(), rel
    for rel in collection.changed:
        assert v1[rel].read_bytes() != v2[rel].read_bytes(), rel
    for rel in collection.added:
        assert rel in v2 and rel not in v1
    for rel in collection.removed:
        assert rel in v1 and rel not in v2
    for copy, original in collection.duplicates.items():
        assert copy not in v1 and v2[copy].read_bytes() == v2[original].read_bytes()
    # Every file is accounted for exactly once.
    assert set(v1) == set(collection.copied) | set(collection.changed) | set(collection.removed)
    assert set(v2) == set(collection.copied) | set(collection.changed) | set(collection.added) | set(collection.duplicates)
    # Both kinds of change and addition happen to digits and to photos.
    for names in (collection.changed, collection.added):
        assert any(r.startswith("unlabeled/") for r in names) and any(r.startswith(("train/", "val/")) for r in names)
    # Most of v2's bytes repeat bytes stored before (whole copies, copies inside v2, photos edited
    # in one region), so the lake's dedup ratio over both versions is well above 1.
    repeated = [*collection.copied, *collection.duplicates, *(r for r in collection.changed if r.endswith(".tif") and "unlabeled/" in r)]
    assert sum(v2[r].stat().st_size for r in repeated) > 0.6 * collection.bytes["v2"]
    # Train/val leakage inside v2 (found by the content_overlap view).
    assert any(copy.startswith("val/") and original.startswith("train/") for copy, original in collection.duplicates.items())


def test_changed_photos_keep_most_bytes_in_place(collection):
    v1, v2 = Path(collection.v1), Path(collection.v2)
    photos = [r for r in collection.changed if r.startswith("unlabeled/") and r.endswith(".tif")]
    assert photos
    for rel in photos:
        a, b = np.frombuffer((v1 / rel).read_bytes(), np.uint8), np.frombuffer((v2 / rel).read_bytes(), np.uint8)
        assert a.size == b.size
        assert 0 < np.count_nonzero(a != b) < 0.1 * a.size  # a region edited, the rest identical


def test_build_is_idempotent_and_deterministic(collection, tmp_path):
    root = Path(collection.root)
    before = {rel: p.stat().st_mtime_ns for rel, p in _files(root).items()}
    again = build_collection(root)
    assert again == collection
    assert {rel: p.stat().st_mtime_ns for rel, p in _files(root).items()} == before  # nothing rewritten
    description = json.loads((root / COLLECTION_FILE).read_text())
    assert description["copied"] == collection.copied
    # A second build elsewhere writes the same bytes.
    other = build_collection(tmp_path / "other")
    for version in ("v1", "v2"):
        a, b = _files(root / version), _files(Path(other.root) / version)
        assert a.keys() == b.keys()
        for rel in list(a)[:: max(1, len(a) // 60)] + [r for r in a if r.startswith("unlabeled/")]:
            assert a[rel].read_bytes() == b[rel].read_bytes(), rel


def test_a_partial_build_is_redone(tmp_path):
    root = tmp_path / "c"
    (root / "v1" / "train").mkdir(parents=True)
    (root / "v1" / "train" / "junk.txt").write_text("left over from an interrupted build")
    col = build_collection(root)
    assert not (root / "v1" / "train" / "junk.txt").exists()
    assert col.files["v1/train"] > 1000


def test_clean_removes_only_a_demo_folder(tmp_path):
    assert clean_demo(tmp_path / "missing") is False
    demo = tmp_path / "demo-output"
    (demo / "lake" / "manifests").mkdir(parents=True)
    (demo / "report.html").write_text("<html></html>")
    assert clean_demo(demo) is True and not demo.exists()
    foreign = tmp_path / "home"
    (foreign / "lake").mkdir(parents=True)
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="did not write"):
        clean_demo(foreign)
    assert (foreign / "thesis.tex").exists()


def test_demo_command_flags():
    from cnnspark.cli import build_parser

    args = build_parser().parse_args(["demo", "--workdir", "w", "--epochs", "2", "--clean"])
    assert (args.workdir, args.epochs, args.clean) == ("w", 2, True)
    assert callable(args.handler)
    defaults = build_parser().parse_args(["demo"])
    assert (defaults.workdir, defaults.clean) == ("demo-output", False)


def test_walkthrough_notebook_is_valid_with_outputs_cleared():
    nb = json.loads((REPO / "notebooks" / "walkthrough.ipynb").read_text())
    assert nb["nbformat"] == 4
    assert nb["cells"]
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code")
        assert isinstance(cell["source"], (list, str))
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    text = "".join("".join(c["source"]) for c in code)
    for step in ("build_collection", "ingest(", "dedup_stats", "make_torch_dataloader", "train(", "verify(", "write_report"):
        assert step in text
    for cell in code:  # every code cell is valid Python
        compile("".join(cell["source"]), "<cell>", "exec")


def test_databricks_notebook_is_in_source_format():
    text = (REPO / "notebooks" / "databricks_walkthrough.py").read_text()
    assert text.startswith("# Databricks notebook source\n")
    assert text.count("\n# COMMAND ----------\n") >= 8
    compile(text, "databricks_walkthrough.py", "exec")
    for step in ("build_collection", "ingest(", "dedup_stats", "train(", "verify(", "write_report"):
        assert step in text


def test_databricks_job_runs_ingest_stats_train_with_the_pinned_libraries():
    job = json.loads((REPO / "conf" / "databricks-job.json").read_text())
    tasks = {t["task_key"]: t for t in job["tasks"]}
    assert list(tasks) == ["ingest", "stats", "train"]
    assert "depends_on" not in tasks["ingest"]
    assert tasks["stats"]["depends_on"] == [{"task_key": "ingest"}]
    assert tasks["train"]["depends_on"] == [{"task_key": "stats"}]
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    assert all(c["spark_version"] == "15.4.x-cpu-ml-scala2.12" for c in clusters.values())
    lock = dict(
        line.split("==", 1) for line in (REPO / "requirements" / "lock.txt").read_text().splitlines() if "==" in line and not line.startswith("#")
    )
    params = {p["name"] for p in job["parameters"]}
    for key, task in tasks.items():
        assert task["job_cluster_key"] in clusters
        python_file = task["spark_python_task"]["python_file"]
        assert python_file.endswith(f"jobs/{key}.py") and (REPO / "jobs" / f"{key}.py").is_file()
        for arg in task["spark_python_task"]["parameters"]:
            if arg.startswith("{{job.parameters."):
                assert arg[len("{{job.parameters.") : -2] in params
        pins = {lib["pypi"]["package"] for lib in task["libraries"] if "pypi" in lib}
        assert pins == {f"{name}=={lock[name]}" for name in ("xxhash", "pyfastcdc", "deltalake")}
        assert any(lib.get("whl", "").endswith(".whl") and "cnnspark" in lib["whl"] for lib in task["libraries"])


def test_cluster_properties_file_parses():
    from cnnspark.session import read_properties

    props = read_properties(REPO / "conf" / "spark-cluster.conf")
    assert props["spark.speculation"] == "false"
    assert props["spark.dynamicAllocation.enabled"] == "false"
    assert all(key.startswith("spark.") for key in props)
