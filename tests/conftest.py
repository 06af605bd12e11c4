"""Shared fixtures: one local Spark session for the whole test run, real image folders."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def spark():
    from cnnspark.session import get_spark

    session = get_spark("cnnspark-tests", master="local[2]")
    session.conf.set("spark.sql.shuffle.partitions", "4")
    yield session
    session.stop()
