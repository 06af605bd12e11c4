"""The jobs on a real Spark cluster: a standalone master and one worker (2 cores) on 127.0.0.1,
started from the installed pyspark (``bin/spark-class``; the pip package has no ``sbin/``
scripts), with ``spark-submit --master spark://...`` running ``jobs/ingest.py`` and
``jobs/train.py`` (2 Horovod processes) against it. Both JVMs are killed, with their process
groups, whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 90
SUBMIT_TIMEOUT_S = 360


def _pyspark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SPARK_HOME": str(_pyspark_home()),
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOCAL_DIRS": str(tmp / "local"),
            "SPARK_WORKER_DIR": str(tmp / "work"),
            "SPARK_LOG_DIR": str(tmp / "logs"),
            "SPARK_DAEMON_MEMORY": "512m",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("SPARK_CONF_DIR", None)
    (tmp / "local").mkdir(parents=True, exist_ok=True)
    return env


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    spark_class = _pyspark_home() / "bin" / "spark-class"
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(spark_class), *args], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _wait_for(what: str, ready, proc: subprocess.Popen, log: Path, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        if ready():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready after {timeout_s} s:\n{log.read_text(errors='replace')[-4000:]}")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen | None) -> None:
    """Kill the process group of one daemon we started (and only it), then reap it."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(master URL, env, folder): a standalone master and one 2-core worker, stopped at the end."""
    tmp = tmp_path_factory.mktemp("standalone")
    env = _env(tmp)
    port, ui, worker_ui = _free_port(), _free_port(), _free_port()
    url = f"spark://127.0.0.1:{port}"
    master = worker = None
    try:
        master_log = tmp / "master.log"
        master = _start(
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)],
            master_log, env,
        )
        _wait_for("the master", lambda: "I have been elected leader" in master_log.read_text(errors="replace") and _port_open(port), master, master_log)
        worker_log = tmp / "worker.log"
        worker = _start(
            [
                "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "2", "--memory", "2g",
                "--webui-port", str(worker_ui), "--work-dir", str(tmp / "work"), url,
            ],
            worker_log, env,
        )
        _wait_for(
            "the worker", lambda: "Successfully registered with master" in worker_log.read_text(errors="replace"), worker, worker_log
        )
        yield url, env, tmp
    finally:
        _stop(worker)
        _stop(master)


def _submit(url: str, env: dict[str, str], job: str, args: list[str], log: Path) -> tuple[int, str]:
    cmd = [
        str(VENV_BIN / "spark-submit"), "--master", url,
        "--properties-file", str(REPO / "conf" / "spark-cluster.conf"),
        "--conf", "spark.driver.memory=1g", "--conf", "spark.executor.memory=1g",
        "--conf", "spark.ui.enabled=false", "--conf", "spark.ui.showConsoleProgress=false",
        str(REPO / "jobs" / job), *args,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=SUBMIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        log.write_bytes(err)
        raise AssertionError(f"spark-submit {job} ran over {SUBMIT_TIMEOUT_S} s:\n{err.decode(errors='replace')[-4000:]}") from None
    log.write_bytes(err)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        text += "\n--- stderr (end) ---\n" + err.decode(errors="replace")[-6000:]
    return proc.returncode, text


def _json(stdout: str) -> dict:
    """The indented JSON document a job printed last (rank output may come before it)."""
    import re

    starts = [m.start() for m in re.finditer(r"^\{$", stdout, flags=re.MULTILINE)]
    assert starts, f"no JSON document in the job's stdout:\n{stdout[-3000:]}"
    return json.JSONDecoder().raw_decode(stdout[starts[-1]:])[0]


def _write_digits(out: Path) -> Path:
    """A tiny real data set: 10 digits of each class as PNG (8 train, 2 val per class)."""
    try:
        from cnnspark.digits import write_digits
    except ImportError:  # pragma: no cover - before cnnspark.digits existed
        pytest.skip("cnnspark.digits is not available")
    write_digits(out, scale=2, limit_per_class=10)
    return out / "train"


def test_ingest_and_train_on_a_standalone_cluster(cluster, tmp_path):
    from cnnspark import chunkstore
    from cnnspark.lake import Lake
    from cnnspark.tables import MANIFESTS

    url, env, _ = cluster
    source = _write_digits(tmp_path / "digits")
    files = sorted(p for p in source.rglob("*") if p.is_file())
    lake_dir = tmp_path / "lake"

    code, out = _submit(
        url, env, "ingest.py", [str(source), "--lake", str(lake_dir), "--dataset", "digits", "--json"], tmp_path / "ingest.log"
    )
    assert code == 0, out
    summary = _json(out)
    assert summary["files_seen"] == len(files) == summary["files_ingested"]
    assert summary["files_quarantined"] == 0
    assert summary["new_chunks"] >= 1

    lake = Lake(str(lake_dir))
    manifests = lake.arrow(MANIFESTS).to_pylist()
    assert len(manifests) == len(files)
    assert {r["label"] for r in manifests} == {str(d) for d in range(10)}
    by_path = {r["relative_path"]: r for r in manifests}
    for path in (files[0], files[len(files) // 2], files[-1]):
        row = by_path[path.relative_to(source).as_posix()]
        assert chunkstore.rebuild(row, chunkstore.fetch(lake, row["chunk_ids"])) == path.read_bytes()

    if not (REPO / "jobs" / "train.py").is_file():
        pytest.skip("jobs/train.py is not there yet")
    code, out = _submit(
        url, env, "train.py",
        [
            "--lake", str(lake_dir), "--dataset", "digits", "--epochs", "1", "--num-proc", "2", "--launcher", "horovod",
            "--val-split", "none", "--run", "cluster-test", "--batch-size", "16", "--workers", "1", "--json",
        ],
        tmp_path / "train.log",
    )
    assert code == 0, out
    result = _json(out)
    assert result["run"] == "cluster-test"
    from cnnspark import artifacts

    assert artifacts.checkpoint_epochs(lake, "cluster-test") == [1]
    checkpoint = artifacts.load_checkpoint(lake, "cluster-test")
    assert checkpoint["epoch"] == 1 and "model" in checkpoint
