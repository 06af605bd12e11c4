"""Distributed training end to end: real local Spark (local[2]), real Horovod and TorchDistributor
processes, a real lake ingested from real PNG files (a subset of scikit-learn's digits)."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import cloudpickle
import pytest
from pyspark import cloudpickle as spark_cloudpickle

from cnnspark import artifacts
from cnnspark.digits import write_digits
from cnnspark.errors import ConfigError
from cnnspark.ingest import IngestOptions, ingest
from cnnspark.lake import Lake
from cnnspark.launchers import RankFailed, root_cause
from cnnspark.train import TrainConfig, prepare, sample_fingerprint, state_digest, train

pytestmark = pytest.mark.slow
# The failing rank functions below live in this test module, which executors cannot import:
# pickle it by value, both for Horovod (cloudpickle) and for Spark's own copy (TorchDistributor).
cloudpickle.register_pickle_by_value(sys.modules[__name__])
spark_cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory) -> Lake:
    """12 digits of each class as 8x8 PNG files (90 train, 30 val), ingested in two splits."""
    root = tmp_path_factory.mktemp("digits")
    write_digits(root / "png", limit_per_class=12, val_fraction=0.25, seed=0)
    uri = str(root / "lake")
    for split in ("train", "val"):
        ingest(spark, IngestOptions(source=str(root / "png" / split), lake=uri, dataset="digits", split=split), progress=None)
    return Lake(uri)


def config(lake: Lake, run: str, **kw) -> TrainConfig:
    base = {"lake": lake.uri, "dataset": "digits", "epochs": 2, "run": run, "num_proc": 2, "batch_size": 8, "lr": 0.05, "workers": 1, "timeout_s": 300}
    base.update(kw)
    return TrainConfig(**base)


def split_fingerprints(lake: Lake, split: str) -> Counter:
    """Every sample of a split, read in one process, fingerprinted like the ranks do."""
    from cnnspark.data import make_torch_dataloader

    found: Counter = Counter()
    with make_torch_dataloader(lake.uri, "digits", split=split, image_size=8, channels=1, shuffle=False, workers=1, batch_size=64) as loader:
        for batch in loader:
            found.update(sample_fingerprint(img, lab) for img, lab in zip(batch["image"].numpy(), batch["label"].tolist(), strict=True))
    return found


def assert_shards_partition_the_split(result, expected: Counter) -> None:
    assert sorted(result.samples) == list(range(result.start_epoch, result.config.epochs + 1))
    for epoch, per_rank in result.samples.items():
        assert len(per_rank) == 2 and all(per_rank), f"epoch {epoch}: a rank got no data"
        a, b = Counter(per_rank[0]), Counter(per_rank[1])
        repeated = {k for k, n in expected.items() if n > 1}  # identical images in two files
        assert not (set(a) & set(b)) - repeated, f"epoch {epoch}: ranks' shards overlap"
        assert a + b == expected, f"epoch {epoch}: shards do not cover the training split exactly once"


def test_horovod_trains_on_disjoint_shards_and_stores_artifacts(spark, lake, tmp_path):
    result = train(config(lake, "hvd", launcher="horovod", trace_samples=True), spark=spark, out=tmp_path / "out", progress=None)
    history = result.history
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"], history
    assert all(r["train_images"] == 90 and r["val_images"] == 30 and r["images_per_second"] > 0 for r in history)
    assert len(set(result.initial_digests)) == 1, "ranks did not start from rank 0's weights"
    assert_shards_partition_the_split(result, split_fingerprints(lake, "train"))
    # Artifacts: a checkpoint per epoch, metrics.json (also copied to --out) and the curve.
    assert artifacts.checkpoint_epochs(lake, "hvd") == [1, 2]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_bytes())
    assert metrics["epochs"] == history and metrics["launcher"] == "horovod"
    assert artifacts.read(lake, "hvd", artifacts.RESULTS, "curve.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "out" / "curve.png").stat().st_size > 1000


def test_resume_continues_from_the_stored_checkpoint(spark, lake):
    stored = artifacts.load_checkpoint(lake, "hvd")
    assert stored["epoch"] == 2
    with pytest.raises(ConfigError, match="already has checkpoints.*--resume"):
        prepare(config(lake, "hvd", epochs=3))
    with pytest.raises(ConfigError, match="already finished epoch 2"):
        prepare(config(lake, "hvd", epochs=2, resume=True))
    result = train(config(lake, "hvd", epochs=3, resume=True), spark=spark, progress=None)
    assert result.start_epoch == 3
    from cnnspark.models import get_model

    model = get_model("cnn", in_channels=1, num_classes=10, image_size=8)
    model.load_state_dict(stored["model"])
    assert result.initial_digests == [state_digest(model)] * 2, "ranks did not start from the checkpoint's weights"
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[:2] == stored["history"]
    assert artifacts.checkpoint_epochs(lake, "hvd") == [1, 2, 3]
    assert artifacts.load_checkpoint(lake, "hvd")["epoch"] == 3


def test_torch_distributor_trains_and_exports_feature_maps(spark, lake):
    result = train(
        config(lake, "ddp", launcher="torch", trace_samples=True, features=("features.conv4",)), spark=spark, progress=None
    )
    history = result.history
    assert history[1]["train_loss"] < history[0]["train_loss"], history
    assert len(set(result.initial_digests)) == 1
    assert_shards_partition_the_split(result, split_fingerprints(lake, "train"))
    maps = [a for a in artifacts.list_artifacts(lake, "ddp") if a.kind == "features/val/features.conv4"]
    assert len(maps) == 30 and all(a.relative_path.startswith("epoch-0002/") for a in maps)
    import io

    import numpy as np

    array = np.load(io.BytesIO(artifacts.read(lake, "ddp", maps[0].kind, maps[0].relative_path)))
    assert array.shape == (64, 4, 4) and array.dtype == np.float32


def test_bad_settings_fail_on_the_driver_before_any_process_starts(spark, lake):
    with pytest.raises(ConfigError, match="--freeze: the model has no layer 'nope'"):
        prepare(config(lake, "x1", freeze=("nope",)))
    with pytest.raises(ConfigError, match="--resume: run 'x2' has no checkpoint"):
        prepare(config(lake, "x2", resume=True))
    with pytest.raises(ConfigError, match="needs 3 Spark task slots"):
        train(config(lake, "x3", num_proc=3), spark=spark, progress=None)


def _fails_on_rank_one(comm):
    if comm.rank == 1:
        raise ValueError("rank one could not decode its shard")
    for _ in range(600):  # rank 0 waits in collectives until the job is stopped
        comm.allreduce([1.0], "sum")
        time.sleep(0.1)
    return "unreachable"


@pytest.mark.parametrize("launcher", ["horovod", "torch"])
def test_a_failing_rank_stops_the_job_with_its_error(spark, launcher):
    from cnnspark import launchers

    started = time.monotonic()
    with pytest.raises(RankFailed) as info:
        launchers.run(_fails_on_rank_one, num_proc=2, launcher=launcher, timeout_s=60)
    assert time.monotonic() - started < 120, "the job hung after a rank failed"
    assert info.value.rank == 1 and info.value.error_type == "ValueError"
    assert "rank one could not decode its shard" in str(info.value)
    assert "training rank 1 failed" in str(info.value)


def test_root_cause_prefers_the_rank_that_failed_first_for_its_own_reason():
    records = [
        {"rank": 0, "type": "HorovodInternalError", "message": "Horovod has been shut down", "time": 1.0},
        {"rank": 1, "type": "ValueError", "message": "bad image", "time": 2.0},
        {"rank": 2, "type": "RuntimeError", "message": "Connection closed by peer", "time": 0.5},
    ]
    assert root_cause(records)["rank"] == 1
    assert root_cause(records[:1])["rank"] == 0
    assert root_cause([]) is None
