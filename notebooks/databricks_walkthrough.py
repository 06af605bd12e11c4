# Databricks notebook source
# MAGIC %md
# MAGIC # cnnspark on Databricks: ingest, deduplication statistics, training
# MAGIC
# MAGIC The steps of `cnnspark demo` on a cluster. Attach the notebook to a cluster on
# MAGIC **Databricks Runtime 15.4 LTS ML** (Spark 3.5, Python 3.11; Horovod, Petastorm, torch and
# MAGIC pyarrow 14 included). On ML 16.0 and later, which no longer ship Horovod, the training cell
# MAGIC uses Spark's TorchDistributor instead (chosen below from the runtime version).
# MAGIC
# MAGIC Paths: the lake and the images live in a Unity Catalog volume, which the driver and every
# MAGIC worker see as a local folder under `/Volumes/...`. Set the widgets, then run all.
# MAGIC
# MAGIC Before: build the wheel from the repository (`pip wheel --no-deps -w dist .`) and upload
# MAGIC `dist/cnnspark-0.1.0-py3-none-any.whl` next to this repository in the workspace
# MAGIC (`/Workspace/Shared/cnnspark/dist/`), or change the path in the next cell.

# COMMAND ----------

# MAGIC %pip install xxhash==3.5.0 pyfastcdc==0.3.1 deltalake==1.6.6 scikit-image==0.24.0 /Workspace/Shared/cnnspark/dist/cnnspark-0.1.0-py3-none-any.whl

# COMMAND ----------

dbutils.library.restartPython()  # noqa: F821 - dbutils exists in Databricks notebooks

# COMMAND ----------

dbutils.widgets.text("root", "/Volumes/main/default/cnnspark", "Volume folder for images and lake")  # noqa: F821
dbutils.widgets.text("epochs", "3", "Training epochs")  # noqa: F821
dbutils.widgets.text("num_proc", "2", "Training processes (<= worker cores)")  # noqa: F821

ROOT = dbutils.widgets.get("root").rstrip("/")  # noqa: F821
LAKE = f"{ROOT}/lake"
EPOCHS = int(dbutils.widgets.get("epochs"))  # noqa: F821
NUM_PROC = int(dbutils.widgets.get("num_proc"))  # noqa: F821
print(ROOT, LAKE, EPOCHS, NUM_PROC)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 1. The collection
# MAGIC Real images shipped with scikit-learn and scikit-image, written to the volume as two versions in
# MAGIC ImageFolder layout (digits as PNG and TIFF in `train/` and `val/`, photos as uncompressed TIFF in
# MAGIC `unlabeled/`). With your own data, point the ingest cell at your folders instead.

# COMMAND ----------

from cnnspark.demo import build_collection

collection = build_collection(f"{ROOT}/collection")
print(collection.render())

# COMMAND ----------

# MAGIC %md
# MAGIC ## 2. Ingest both versions with Spark
# MAGIC Each ingest runs in the cluster's tasks: list with `binaryFile`, chunk (FastCDC) and hash (XXH3-128),
# MAGIC write the chunks the lake lacks, commit one Delta transaction per table. Re-running commits nothing.

# COMMAND ----------

from cnnspark.ingest import IngestOptions, ingest

for dataset, folder in (("demo-v1", collection.v1), ("demo-v2", collection.v2)):
    for split, labels in (("train", "dirname"), ("val", "dirname"), ("unlabeled", "none")):
        summary = ingest(spark, IngestOptions(source=f"{folder}/{split}", lake=LAKE, dataset=dataset, split=split, labels=labels), progress=None)  # noqa: F821
        print(f"{dataset}/{split}: {summary.files_ingested} ingested, {summary.files_unchanged} unchanged, "
              f"{summary.new_chunks} new chunks, lake ratio {summary.lake_dedup_ratio:.2f}x")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 3. Deduplication statistics (Spark SQL)
# MAGIC The Delta tables are read by Databricks' own Delta reader; `open_lake` registers the views
# MAGIC `chunks`, `manifests`, `quarantine`, `chunk_refs`, `dedup_stats`, `content_overlap`, `table_files`.

# COMMAND ----------

from cnnspark import stats

stats.open_lake(spark, LAKE)  # noqa: F821
display(spark.sql("SELECT * FROM dedup_stats ORDER BY scope, dataset, split"))  # noqa: F821

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT kind, dataset_a, split_a, dataset_b, split_b, count(*) AS files, sum(size) AS bytes
# MAGIC FROM content_overlap
# MAGIC GROUP BY kind, dataset_a, split_a, dataset_b, split_b
# MAGIC ORDER BY kind, files DESC

# COMMAND ----------

# MAGIC %md
# MAGIC ## 4. Train a CNN across the workers
# MAGIC Each training process is a Spark task reading its own shard through Petastorm. Horovod on
# MAGIC 15.4 LTS ML and earlier; TorchDistributor (`launcher="torch"`) on 16.0 ML and later.

# COMMAND ----------

import os

from cnnspark import artifacts
from cnnspark.lake import Lake
from cnnspark.train import TrainConfig, train

runtime_major = int(os.environ.get("DATABRICKS_RUNTIME_VERSION", "15.4").split(".")[0])
LAUNCHER = "horovod" if runtime_major <= 15 else "torch"
RUN = f"demo-v2-cnn-{LAUNCHER}"
done = artifacts.checkpoint_epochs(Lake(LAKE), RUN)
if done and done[-1] >= EPOCHS:
    print(f"run {RUN} already trained to epoch {done[-1]}")
else:
    config = TrainConfig(lake=LAKE, dataset="demo-v2", epochs=EPOCHS, run=RUN, num_proc=NUM_PROC, launcher=LAUNCHER, resume=bool(done))
    result = train(config, spark=spark, out=f"{ROOT}/results")  # noqa: F821
    print(result.render())

# COMMAND ----------

# MAGIC %md
# MAGIC ## 5. Verify and report

# COMMAND ----------

from cnnspark.report import write_report
from cnnspark.verify import verify

report = verify(LAKE)
print(report.render())
written = write_report(spark, LAKE, f"{ROOT}/report.html")  # noqa: F821
with open(written.path, encoding="utf-8") as page:
    displayHTML(page.read())  # noqa: F821
