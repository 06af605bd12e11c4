"""A lake: a folder or object-store prefix holding the ``chunks``, ``manifests`` and
``quarantine`` Delta tables (see :mod:`cnnspark.tables`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from cnnspark import delta
from cnnspark.errors import LakeError
from cnnspark.tables import SCHEMAS, TABLES

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Spark reads tables through Delta when the Delta jars are on its classpath (Databricks); set
# spark.cnnspark.readDelta to true/false to force either way.
READ_DELTA_CONF = "spark.cnnspark.readDelta"


def normalize_uri(uri: str) -> str:
    """Absolute local path for local lakes (``file://`` stripped); URIs unchanged, no trailing slash."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" not in uri:
        return os.path.abspath(os.path.expanduser(uri))
    return uri.rstrip("/")


def spark_path(uri: str) -> str:
    """A path Spark reads: ``file:`` URIs for local files."""
    return "file://" + uri if uri.startswith("/") else uri


class Lake:
    """Handle on a lake's tables. Cheap to create and picklable (it holds only strings)."""

    def __init__(self, uri: str, *, storage_options: dict[str, str] | None = None) -> None:
        self.uri = normalize_uri(uri)
        self.storage_options = storage_options

    def __repr__(self) -> str:
        return f"Lake({self.uri!r})"

    def table_uri(self, name: str) -> str:
        if name not in TABLES:
            raise LakeError(f"unknown table {name!r}; the lake has {', '.join(TABLES)}")
        return f"{self.uri}/{name}"

    def exists(self, name: str | None = None) -> bool:
        names = [name] if name else list(TABLES)
        return all(delta.table_exists(self.table_uri(n), self.storage_options) for n in names)

    def require(self) -> None:
        """Raise a LakeError naming the lake when it has no manifests table (nothing ingested)."""
        if not self.exists("manifests"):
            raise LakeError(
                f"no cnnspark lake at {self.uri}: the manifests table is missing; "
                "run `cnnspark ingest SOURCE --lake LAKE --dataset NAME` first"
            )

    def ensure(self) -> None:
        """Create any missing table, empty, so readers always find all three."""
        for name in TABLES:
            delta.ensure_table(self.table_uri(name), SCHEMAS[name], self.storage_options)

    def files(self, name: str) -> list[str]:
        """Exact data files of the table's current snapshot."""
        return delta.snapshot_files(self.table_uri(name), self.storage_options)

    def version(self, name: str) -> int | None:
        from deltalake import DeltaTable

        if not delta.table_exists(self.table_uri(name), self.storage_options):
            return None
        return DeltaTable(self.table_uri(name), storage_options=self.storage_options).version()

    def arrow(self, name: str, columns: list[str] | None = None, filter: pc.Expression | None = None) -> pa.Table:
        """Read a table's current snapshot into Arrow (empty table with the schema if absent)."""
        return delta.read_table(
            self.table_uri(name), SCHEMAS[name], columns, filter, storage_options=self.storage_options
        )

    def dataframe(self, spark: SparkSession, name: str) -> DataFrame:
        """The table as a Spark DataFrame: through Delta where Spark has it, else the snapshot's files."""
        from pyspark.sql.pandas.types import from_arrow_schema

        uri = self.table_uri(name)
        setting = spark.conf.get(READ_DELTA_CONF, "auto").lower()
        if setting != "false" and delta.table_exists(uri, self.storage_options):
            try:
                return spark.read.format("delta").load(spark_path(uri))
            except Exception as e:  # AnalysisException or a py4j error, by Spark version
                if setting == "true" or "delta" not in str(e).lower():
                    raise LakeError(f"Spark could not read {uri} as Delta: {e}") from e
        files = self.files(name)
        schema = from_arrow_schema(SCHEMAS[name])
        if not files:
            return spark.createDataFrame([], schema)
        return spark.read.schema(schema).parquet(*[spark_path(f) for f in files])
