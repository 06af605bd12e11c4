"""The one place that builds the SparkSession.

Under ``spark-submit`` (or on Databricks) the session that exists, or the master spark-submit
passed, is used as it is. Run directly, an embedded ``local[*]`` Spark starts, configured from
``conf/spark-local.conf``. Python workers must run this interpreter, so PYSPARK_PYTHON is set to
``sys.executable`` when the user has not set it.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

LOCAL_CONF = "spark-local.conf"
_SEPARATOR = re.compile(r"\s*=\s*|\s+")


def conf_dir() -> Path:
    """``$CNNSPARK_CONF_DIR``, else the ``conf/`` folder of the source checkout."""
    env = os.environ.get("CNNSPARK_CONF_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "conf"


def read_properties(path: Path) -> dict[str, str]:
    """Read a Spark properties file (``key value`` or ``key=value`` per line, ``#`` comments)."""
    props: dict[str, str] = {}
    if not path.is_file():
        return props
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = _SEPARATOR.split(line, maxsplit=1)
        props[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return props


def get_spark(app_name: str = "cnnspark", *, master: str | None = None) -> SparkSession:
    """Return the active SparkSession, or build one (embedded ``local[*]`` unless a master is set)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name)
    submitted = SparkConf()  # carries spark-submit's --master and --conf values
    if master is not None:
        builder = builder.master(master)
    elif not submitted.contains("spark.master"):
        builder = builder.master("local[*]")
    local = master is not None or not submitted.contains("spark.master")
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        for key, value in read_properties(conf_dir() / LOCAL_CONF).items():
            if not submitted.contains(key):
                builder = builder.config(key, value)
        log_conf = conf_dir() / "log4j2.properties"
        if log_conf.is_file() and not submitted.contains("spark.driver.extraJavaOptions"):
            builder = builder.config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={log_conf.as_uri()}")
    spark = builder.getOrCreate()
    return spark
