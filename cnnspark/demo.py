"""The main job on one machine: ``cnnspark demo`` (and ``make demo``).

Two parts, both usable as library functions:

:func:`build_collection`
    Writes a demo image collection from real images that ship inside installed packages (no
    download): scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes) enlarged to
    32x32 and written alternately as PNG and uncompressed TIFF, and real photographs and textures
    (scikit-learn's sample photos, scikit-image's bundled images) as large uncompressed TIFF plus
    a few original PNG files. Two versions, the way teams accumulate them::

        OUT/v1/train/<digit>/digit-NNNN.png|.tif     labelled, ImageFolder layout
        OUT/v1/val/<digit>/digit-NNNN.png|.tif
        OUT/v1/unlabeled/<name>.tif|.png              high-resolution pool waiting for labels
        OUT/v2/...                                    same layout

    ``v2`` copies most of ``v1`` unchanged, *changes* some files at the same path (digits
    shifted by one pixel after a re-crop; photos with a region edited, as an annotation tool
    would burn in a box) and *adds* files (the digits held back from v1; new photos).
    ``OUT/collection.json`` lists every relationship; the folders are written once and reused.

:func:`run_demo`
    Runs the product's jobs on that collection against a local lake, printing numbered steps:
    ingest both versions with the Spark ingest job (three splits each), print the Spark SQL
    deduplication statistics, train a CNN on ``demo-v2`` with two Horovod processes reading
    through Petastorm, verify the lake, write the HTML report, and print where everything is.

Re-running is idempotent: the collection is reused, every ingest finds nothing new and commits
nothing, and training is **resumed or skipped**: the run is always named ``demo-v2-cnn``; if its
checkpoints already reach ``--epochs`` training is skipped (the stored metrics are shown), if
they stop earlier training resumes from the last checkpoint up to ``--epochs``. ``--clean``
deletes the work folder first, so the next run starts from nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cnnspark.errors import ConfigError

DEFAULT_WORKDIR = "demo-output"
DEFAULT_EPOCHS = 4
DEFAULT_NUM_PROC = 2
COLLECTION_FILE = "collection.json"
COLLECTION_FORMAT = "cnnspark-demo-collection/1"
DATASETS = ("demo-v1", "demo-v2")
SPLITS = (("train", "dirname"), ("val", "dirname"), ("unlabeled", "none"))  # (split, --labels)
RUN_NAME = "demo-v2-cnn"
DIGIT_SIZE = 32  # 8x8 digits enlarged 4x (nearest neighbour: no pixels invented)
VAL_FRACTION = 0.2
HELD_BACK_FRACTION = 0.2  # digits only in v2 ("added")
CHANGED_FRACTION = 0.05  # v1 digits re-cropped in v2 ("changed")
SEED = 0

# Photos: (file, package, name in the collection). Bundled with the packages, read from their
# folders with Pillow, so nothing is fetched (skimage.data.* would go through pooch for some).
V1_PHOTOS = (
    ("china.jpg", "sklearn", "china.tif"),
    ("flower.jpg", "sklearn", "flower.tif"),
    ("astronaut.png", "skimage", "astronaut.tif"),
    ("camera.png", "skimage", "camera.tif"),
    ("coffee.png", "skimage", "coffee.tif"),
    ("retina.jpg", "skimage", "retina.tif"),
    ("brick.png", "skimage", "brick.tif"),
    ("grass.png", "skimage", "grass.tif"),
    ("gravel.png", "skimage", "gravel.tif"),
)
V1_PNG = (("coins.png", "skimage"), ("moon.png", "skimage"), ("text.png", "skimage"))
V2_CHANGED_PHOTOS = ("camera.tif", "retina.tif", "china.tif")  # a region edited in place
V2_ADDED_PHOTOS = (
    ("hubble_deep_field.jpg", "skimage", "hubble_deep_field.tif"),
    ("rocket.jpg", "skimage", "rocket.tif"),
    ("chelsea.png", "skimage", "chelsea.tif"),
)
V2_ADDED_PNG = (("page.png", "skimage"),)
V2_DROPPED = ("text.png",)  # in v1 only: versions also lose files
# Copies inside v2 under other paths, as careless merges make them: photos delivered twice
# (a second batch folder) and a few training digits that also landed in val (train/val leakage,
# which the content_overlap view finds).
V2_DUPLICATED_PHOTOS = ("astronaut.tif", "retina.tif")
V2_LEAKED_DIGITS = 12


def _package_file(package: str, name: str) -> Path:
    """A data file that ships inside an installed package."""
    if package == "sklearn":
        import sklearn.datasets

        path = Path(sklearn.datasets.__file__).parent / "images" / name
    elif package == "skimage":
        import skimage

        path = Path(skimage.__file__).parent / "data" / name
    else:  # pragma: no cover - the tables above name only these two
        raise ValueError(package)
    if not path.is_file():
        raise ConfigError(f"the demo image {name} is missing from the installed {package} package ({path}); reinstall it")
    return path


def _rgb_or_gray(package: str, name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(_package_file(package, name)) as im:
        im.load()
        if im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
        return np.asarray(im)


def _save_tiff(pixels: np.ndarray, path: Path) -> None:
    """Uncompressed, single-strip-per-row-block TIFF written by Pillow (deterministic bytes)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="TIFF")  # no compression: the raw pixel rows


def _save_digit(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG" if path.suffix == ".png" else "TIFF")


def _edit_region(pixels: np.ndarray, seed: int) -> np.ndarray:
    """Burn a filled box (an annotation tool's highlight) into a band of rows near the middle."""
    out = pixels.copy()
    h, w = out.shape[:2]
    rng = np.random.default_rng(seed)
    top = int(h * 0.45) + int(rng.integers(0, max(1, h // 20)))
    left = w // 4
    out[top : top + max(4, h // 25), left : left + w // 2] = 255
    return out


@dataclass
class Collection:
    """What :func:`build_collection` wrote; also stored as ``collection.json`` beside v1 and v2."""

    root: str
    v1: str
    v2: str
    files: dict[str, int] = field(default_factory=dict)  # "v1/train" -> count
    bytes: dict[str, int] = field(default_factory=dict)  # "v1" -> total bytes
    copied: list[str] = field(default_factory=list)  # same relative path, same bytes in v1 and v2
    changed: list[str] = field(default_factory=list)  # same relative path, new bytes in v2
    added: list[str] = field(default_factory=list)  # only in v2
    removed: list[str] = field(default_factory=list)  # only in v1
    duplicates: dict[str, str] = field(default_factory=dict)  # v2 path -> the v2 path it copies
    classes: list[str] = field(default_factory=list)
    format: str = COLLECTION_FORMAT

    def render(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.files.items()))
        return (
            f"demo collection under {self.root}: {counts} files; v1 {_size(self.bytes.get('v1', 0))}, "
            f"v2 {_size(self.bytes.get('v2', 0))}\n"
            f"  v2 relative to v1: {len(self.copied)} copied unchanged, {len(self.changed)} changed, "
            f"{len(self.added)} added, {len(self.removed)} removed; {len(self.duplicates)} copies inside v2 "
            f"(photos delivered twice, digits leaked from train into val); {len(self.classes)} digit classes"
        )


def _size(n: float) -> str:
    from cnnspark.sizes import format_size

    return format_size(int(n))


def _digits_plan() -> list[dict]:
    """One entry per digit image: split, whether v1 holds it, whether v2 changes it, its format."""
    from sklearn.datasets import load_digits

    from cnnspark.digits import stratified_split

    digits = load_digits()
    images = np.asarray(digits.images)
    labels = np.asarray(digits.target)
    is_val = stratified_split(labels, val_fraction=VAL_FRACTION, seed=SEED)
    rng = np.random.default_rng(SEED + 1)
    draw = rng.random(len(labels))
    plan = []
    for i, (label, val) in enumerate(zip(labels, is_val, strict=True)):
        held_back = draw[i] < HELD_BACK_FRACTION
        changed = not held_back and draw[i] < HELD_BACK_FRACTION + CHANGED_FRACTION
        ext = ".png" if i % 2 == 0 else ".tif"
        pixels = np.clip(np.rint(images[i] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        pixels = np.kron(pixels, np.ones((DIGIT_SIZE // 8, DIGIT_SIZE // 8), dtype=np.uint8))
        plan.append(
            {
                "rel": f"{'val' if val else 'train'}/{int(label)}/digit-{i:04d}{ext}",
                "pixels": pixels,
                "in_v1": not held_back,
                "changed": changed,
            }
        )
    return plan


def _recrop(pixels: np.ndarray) -> np.ndarray:
    """v2's re-crop of a digit: the same scan shifted one pixel right and down (label unchanged)."""
    out = np.zeros_like(pixels)
    out[1:, 1:] = pixels[:-1, :-1]
    return out


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def build_collection(out_dir: str | os.PathLike, *, progress: Callable[[str], None] | None = None) -> Collection:
    """Write the two-version demo collection under ``out_dir`` (see the module doc) and return it.

    Idempotent: when ``out_dir/collection.json`` exists from a complete earlier build, nothing is
    written and the stored description is returned. A partial build is removed and redone.
    Every file's bytes are the same on every build (fixed seeds, deterministic encoders).
    """
    root = Path(out_dir).expanduser().resolve()
    marker = root / COLLECTION_FILE
    if marker.is_file():
        try:
            stored = json.loads(marker.read_text())
            if stored.get("format") == COLLECTION_FORMAT and Path(stored["v1"]).is_dir() and Path(stored["v2"]).is_dir():
                return Collection(**stored)
        except (ValueError, TypeError, KeyError):
            pass
    for part in ("v1", "v2", COLLECTION_FILE):
        target = root / part
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    root.mkdir(parents=True, exist_ok=True)
    v1, v2 = root / "v1", root / "v2"
    say = progress or (lambda _m: None)
    col = Collection(root=str(root), v1=str(v1), v2=str(v2))

    say("writing the scikit-learn digits (32x32, PNG and TIFF) ...")
    plan = _digits_plan()
    for item in plan:
        rel = item["rel"]
        if item["in_v1"]:
            _save_digit(item["pixels"], v1 / rel)
            if item["changed"]:
                _save_digit(_recrop(item["pixels"]), v2 / rel)
                col.changed.append(rel)
            else:
                (v2 / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(v1 / rel, v2 / rel)
                col.copied.append(rel)
        else:
            _save_digit(item["pixels"], v2 / rel)
            col.added.append(rel)
    col.classes = sorted({item["rel"].split("/")[1] for item in plan}, key=int)

    say("writing photos and textures from scikit-learn and scikit-image (uncompressed TIFF, PNG) ...")
    for k, (name, package, target) in enumerate(V1_PHOTOS):
        pixels = _rgb_or_gray(package, name)
        rel = f"unlabeled/{target}"
        _save_tiff(pixels, v1 / rel)
        if target in V2_CHANGED_PHOTOS:
            _save_tiff(_edit_region(pixels, SEED + k), v2 / rel)
            col.changed.append(rel)
        else:
            (v2 / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(v1 / rel, v2 / rel)
            col.copied.append(rel)
    for name, package in V1_PNG:
        rel = f"unlabeled/{name}"
        (v1 / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_package_file(package, name), v1 / rel)
        if name in V2_DROPPED:
            col.removed.append(rel)
        else:
            shutil.copyfile(v1 / rel, v2 / rel)
            col.copied.append(rel)
    for name, package, target in V2_ADDED_PHOTOS:
        rel = f"unlabeled/{target}"
        _save_tiff(_rgb_or_gray(package, name), v2 / rel)
        col.added.append(rel)
    for name, package in V2_ADDED_PNG:
        rel = f"unlabeled/{name}"
        shutil.copyfile(_package_file(package, name), v2 / rel)
        col.added.append(rel)

    for name in V2_DUPLICATED_PHOTOS:
        rel, copy = f"unlabeled/{name}", f"unlabeled/batch-2/{name}"
        (v2 / copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(v2 / rel, v2 / copy)
        col.duplicates[copy] = rel
    leaked = [item["rel"] for item in plan if item["rel"].startswith("train/")][:: max(1, len(plan) // (2 * V2_LEAKED_DIGITS))]
    for rel in leaked[:V2_LEAKED_DIGITS]:
        label, name = rel.split("/")[1:]
        copy = f"val/{label}/leaked-{name}"
        shutil.copyfile(v2 / rel, v2 / copy)
        col.duplicates[copy] = rel

    for version, folder in (("v1", v1), ("v2", v2)):
        for split, _labels in SPLITS:
            col.files[f"{version}/{split}"] = sum(1 for p in (folder / split).rglob("*") if p.is_file())
        col.bytes[version] = _tree_bytes(folder)
    for names in (col.copied, col.changed, col.added, col.removed):
        names.sort()
    marker.write_text(json.dumps(asdict(col), indent=1, sort_keys=True))
    return col


# ---------------------------------------------------------------------------------------------
# The demo pipeline


@dataclass
class DemoResult:
    """Where everything is after :func:`run_demo`, plus the headline numbers."""

    workdir: str
    collection: str
    lake: str
    report: str
    results: str
    run: str
    lake_dedup_ratio: float | None = None
    final_val_accuracy: float | None = None
    verify_ok: bool = False
    trained: str = ""  # "trained", "resumed" or "skipped"
    ingests: list[dict] = field(default_factory=list)
    seconds: float = 0.0


class _Steps:
    def __init__(self, total: int, out: Callable[[str], None]) -> None:
        self.total, self.n, self.out, self.started = total, 0, out, time.monotonic()

    def step(self, title: str) -> None:
        self.n += 1
        elapsed = time.monotonic() - self.started
        self.out(f"\n=== [{self.n}/{self.total}] {title}  (t+{elapsed:.0f}s)")


def _demo_spark():
    """The session: spark-submit's or Databricks' when there is one, else local[N>=2] (two ranks)."""
    from pyspark import SparkConf

    from cnnspark.session import get_spark

    if "DATABRICKS_RUNTIME_VERSION" in os.environ or SparkConf().contains("spark.master"):
        return get_spark("cnnspark demo")
    spark = get_spark("cnnspark demo", master=f"local[{max(DEFAULT_NUM_PROC, os.cpu_count() or 1)}]")
    _quiet_loggers(spark, QUIET_LOGGERS)
    return spark


# Spark warns once per query that a global window runs in one partition; the statistics' small
# ranking queries do that on purpose, and the demo's output should stay readable.
QUIET_LOGGERS = ("org.apache.spark.sql.execution.window.WindowExec",)


def _quiet_loggers(spark, names: tuple[str, ...]) -> None:
    try:
        jvm = spark.sparkContext._jvm
        level = jvm.org.apache.logging.log4j.Level.ERROR
        for name in names:
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, level)
    except Exception as e:  # noqa: BLE001 - cosmetic only: the warnings stay
        print(f"(could not quiet Spark loggers: {type(e).__name__})", file=sys.stderr)


def _train_step(lake: str, dataset: str, *, epochs: int, num_proc: int, out: Path, spark, say) -> tuple[str, dict]:
    """Train, resume or skip the demo run; returns (what happened, final epoch record)."""
    from cnnspark import artifacts
    from cnnspark.lake import Lake
    from cnnspark.train import TrainConfig, train

    done = artifacts.checkpoint_epochs(Lake(lake), RUN_NAME)
    if done and done[-1] >= epochs:
        ckpt = artifacts.load_checkpoint(Lake(lake), RUN_NAME)
        say(f"run {RUN_NAME} already has checkpoints up to epoch {done[-1]} (>= --epochs {epochs}): training skipped")
        out.mkdir(parents=True, exist_ok=True)
        for name in (f"{artifacts.RESULTS}/{artifacts.METRICS_FILE}", f"{artifacts.RESULTS}/{artifacts.CURVE_FILE}"):
            try:
                artifacts.export(Lake(lake), RUN_NAME, name, out)
            except Exception as e:  # noqa: BLE001 - the local copies are a convenience
                say(f"could not copy {name} to {out}: {e}")
        history = ckpt.get("history") or [{}]
        return "skipped", history[-1]
    resume = bool(done)
    if resume:
        say(f"run {RUN_NAME} has checkpoints up to epoch {done[-1]}: resuming to epoch {epochs}")
    config = TrainConfig(lake=lake, dataset=dataset, epochs=epochs, run=RUN_NAME, num_proc=num_proc, launcher="horovod", resume=resume)
    result = train(config, spark=spark, out=out, progress=say)
    say(result.render())
    return ("resumed" if resume else "trained"), result.final


def run_demo(
    workdir: str | os.PathLike = DEFAULT_WORKDIR,
    *,
    clean: bool = False,
    epochs: int = DEFAULT_EPOCHS,
    num_proc: int = DEFAULT_NUM_PROC,
    train: bool = True,
    out: Callable[[str], None] = print,
) -> DemoResult:
    """Run the whole demo in ``workdir`` (see the module doc) and return where everything is.

    ``clean=True`` only deletes ``workdir`` (:func:`clean_demo`) and returns; run again to start over.
    """
    if epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    started = time.monotonic()
    root = Path(workdir).expanduser().resolve()
    if clean:
        removed = clean_demo(root)
        out(f"removed {root}" if removed else f"nothing to clean: {root} does not exist")
        return DemoResult(workdir=str(root), collection="", lake="", report="", results="", run=RUN_NAME, verify_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    lake_dir, report_path, results_dir = root / "lake", root / "report.html", root / "results"
    result = DemoResult(
        workdir=str(root), collection=str(root / "collection"), lake=str(lake_dir), report=str(report_path),
        results=str(results_dir), run=RUN_NAME,
    )
    steps = _Steps(7 if train else 6, out)
    def say(message: str) -> None:
        out(f"    {message}")

    steps.step("Build the demo collection from images that ship with scikit-learn and scikit-image")
    col = build_collection(root / "collection", progress=say)
    for line in col.render().splitlines():
        say(line.strip())

    steps.step("Start Spark")
    spark = _demo_spark()
    say(f"Spark {spark.version}, master {spark.sparkContext.master}")

    from cnnspark.ingest import IngestOptions, ingest

    steps.step("Ingest both versions with the Spark ingest job (chunk, hash, dedup, commit to Delta)")
    for dataset, folder in zip(DATASETS, (col.v1, col.v2), strict=True):
        for split, labels in SPLITS:
            options = IngestOptions(source=str(Path(folder) / split), lake=str(lake_dir), dataset=dataset, split=split, labels=labels)
            say(f"ingest {Path(folder).name}/{split} -> dataset {dataset}, split {split} (labels: {labels})")
            summary = ingest(spark, options, progress=None)
            result.ingests.append(summary.to_dict())
            say(
                f"  {summary.files_seen} files: {summary.files_ingested} ingested ({summary.files_new} new, "
                f"{summary.files_changed} changed), {summary.files_unchanged} unchanged, {summary.files_quarantined} quarantined; "
                f"{_size(summary.logical_bytes)} logical -> {_size(summary.new_physical_bytes)} new physical in "
                f"{summary.new_chunks} chunks; lake ratio {summary.lake_dedup_ratio:.2f}x ({summary.seconds:.0f} s)"
                + ("" if summary.files_ingested or summary.quarantine_rows_added else "  [nothing new: no commit]")
            )

    steps.step("Deduplication statistics (Spark SQL over the lake's views)")
    from cnnspark import stats

    stats.open_lake(spark, str(lake_dir))
    rows = stats.dedup_stats(spark)
    out(stats.render_stats(rows))
    lake_row = next((r for r in rows if r["scope"] == "lake"), None)
    if lake_row is not None and lake_row["dedup_ratio"] is not None:
        result.lake_dedup_ratio = float(lake_row["dedup_ratio"])
    overlap = stats.run_query(
        spark,
        "SELECT kind, dataset_a, dataset_b, count(*) AS identical_files, sum(size) AS bytes "
        "FROM content_overlap GROUP BY kind, dataset_a, dataset_b ORDER BY kind, dataset_a, dataset_b",
    )
    say("identical files across versions and splits (SELECT ... FROM content_overlap GROUP BY ...):")
    out(overlap.render())

    if train:
        steps.step(f"Train a CNN on demo-v2 with {num_proc} Horovod processes reading through Petastorm")
        result.trained, final = _train_step(
            str(lake_dir), DATASETS[1], epochs=epochs, num_proc=num_proc, out=results_dir, spark=spark, say=say
        )
        if final.get("val_accuracy") is not None:
            result.final_val_accuracy = float(final["val_accuracy"])

    steps.step("Verify the lake (re-hash every chunk, rebuild and re-hash every file)")
    from cnnspark.verify import verify

    report = verify(str(lake_dir))
    result.verify_ok = report.ok
    for line in report.render().splitlines():
        say(line)

    steps.step("Write the HTML report")
    from cnnspark.report import write_report

    written = write_report(spark, str(lake_dir), report_path)
    say(f"wrote {written.path} ({_size(written.bytes)})")

    result.seconds = round(time.monotonic() - started, 1)
    out("\n" + where_everything_is(result))
    return result


DEMO_PARTS = ("collection", "lake", "results", "report.html")


def clean_demo(workdir: str | os.PathLike = DEFAULT_WORKDIR) -> bool:
    """Delete the demo's work folder; False when it does not exist.

    Refuses a folder that holds anything besides what the demo writes, so a mistyped
    ``--workdir`` (a home folder, a source tree) is never deleted.
    """
    root = Path(workdir).expanduser().resolve()
    if not root.exists():
        return False
    if not root.is_dir():
        raise ConfigError(f"--workdir {root} is a file, not a demo work folder; not deleting it")
    foreign = sorted(p.name for p in root.iterdir() if p.name not in DEMO_PARTS and p.name != "spark-warehouse")
    if foreign:
        raise ConfigError(
            f"--clean: {root} holds files the demo did not write ({', '.join(foreign[:5])}); "
            "not deleting it. Remove it yourself if it really is the demo's folder."
        )
    shutil.rmtree(root)
    return True


def where_everything_is(result: DemoResult) -> str:
    lake = result.lake
    lines = [
        "=" * 78,
        f"cnnspark demo finished in {result.seconds:.0f} s" + ("" if result.verify_ok else "  -- VERIFY FOUND PROBLEMS"),
        "=" * 78,
        f"  work folder      {result.workdir}",
        f"  source images    {result.collection}/v1 and /v2  (what changed: {result.collection}/{COLLECTION_FILE})",
        f"  lake (Delta)     {lake}/chunks, {lake}/manifests, {lake}/quarantine",
        f"  HTML report      {result.report}",
    ]
    if result.trained:
        lines += [
            (
                f"  training run     {result.run} ({result.trained}); its checkpoints are in the lake: "
                f"cnnspark artifacts list --lake {lake} --run {result.run}"
            ),
            f"  metrics, curve   {result.results}/metrics.json, {result.results}/curve.png",
        ]
    if result.lake_dedup_ratio is not None:
        lines.append(f"  lake dedup ratio {result.lake_dedup_ratio:.2f}x")
    if result.final_val_accuracy is not None:
        lines.append(f"  val accuracy     {100 * result.final_val_accuracy:.1f}% (digits, last epoch)")
    lines += [
        "  next             cnnspark stats --lake " + lake,
        "                   cnnspark sql --lake " + lake + " \"SELECT * FROM content_overlap LIMIT 10\"",
        "                   cnnspark verify --lake " + lake,
        "  re-run           cnnspark demo  (idempotent: ingests commit nothing, training is skipped or resumed)",
        "  clean up         cnnspark demo --clean" + ("" if Path(result.workdir).name == DEFAULT_WORKDIR else f" --workdir {result.workdir}") + "  (deletes the work folder)",
    ]
    return "\n".join(lines)


