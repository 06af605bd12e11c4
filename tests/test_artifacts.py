"""Artifacts in the lake: checkpoints round-trip, frozen layers share chunks between checkpoints,
list/export through the library and the CLI, and the digits PNG writer."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnspark import artifacts
from cnnspark.digits import write_digits
from cnnspark.errors import ConfigError, LakeError
from cnnspark.lake import Lake
from cnnspark.models import freeze, get_model, set_train_mode

torch.set_num_threads(1)
CLI = str(Path(sys.executable).with_name("cnnspark"))
FROZEN = ("stem", "layer1", "layer2")


def digits_batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images[:n] / 16.0).astype(np.float32)).unsqueeze(1)
    return x, torch.from_numpy(d.target[:n].astype(np.int64))


def train_steps(model, optimizer, steps: int = 3) -> None:
    x, y = digits_batch()
    for _ in range(steps):
        set_train_mode(model, FROZEN)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.fixture()
def frozen_run(tmp_path):
    """A ResNet with frozen stem/layer1/layer2, checkpointed after two rounds of real SGD steps."""
    torch.manual_seed(0)
    lake = Lake(str(tmp_path / "lake"))
    model = get_model("resnet", in_channels=1, num_classes=10, image_size=8)
    freeze(model, FROZEN)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    puts = []
    for epoch in (1, 2):
        train_steps(model, optimizer)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "history": [{"epoch": epoch}], "config": {}}
        puts.append(artifacts.save_checkpoint(lake, "frozen-run", epoch, state))
    return lake, model, puts


def test_consecutive_checkpoints_of_a_frozen_model_share_chunks(frozen_run):
    lake, model, (first, second) = frozen_run
    frozen_bytes = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k.startswith(FROZEN))
    chunks, shared = artifacts.shared_chunks(lake, "frozen-run", artifacts.CHECKPOINTS, "epoch-0001.pt", "epoch-0002.pt")
    assert chunks > 0
    # Everything frozen is shared except at most the chunks cut across its edges.
    assert shared >= frozen_bytes - 2 * artifacts.ARTIFACT_CHUNKING.max_size, (shared, frozen_bytes)
    # The second checkpoint added only the changed part to the chunks table.
    assert second.new_bytes <= second.logical_bytes - shared
    assert second.new_bytes < 0.9 * first.new_bytes


def test_checkpoint_round_trip_and_latest(frozen_run):
    lake, model, _ = frozen_run
    assert artifacts.checkpoint_epochs(lake, "frozen-run") == [1, 2]
    latest = artifacts.load_checkpoint(lake, "frozen-run")
    assert latest["epoch"] == 2
    for key, value in model.state_dict().items():
        assert torch.equal(latest["model"][key], value), key
    assert artifacts.load_checkpoint(lake, "frozen-run", 1)["epoch"] == 1
    with pytest.raises(LakeError, match="no checkpoint of epoch 7"):
        artifacts.load_checkpoint(lake, "frozen-run", 7)
    with pytest.raises(LakeError, match="no checkpoints"):
        artifacts.load_checkpoint(lake, "other-run")


def test_list_export_and_summary(tmp_path, frozen_run):
    lake, _, _ = frozen_run
    metrics = json.dumps({"epochs": [{"epoch": 1, "val_accuracy": 0.9}]}).encode()
    artifacts.put(lake, "frozen-run", artifacts.RESULTS, {artifacts.METRICS_FILE: metrics}, format="json")
    names = [a.name for a in artifacts.list_artifacts(lake, "frozen-run")]
    assert names == ["checkpoints/epoch-0001.pt", "checkpoints/epoch-0002.pt", "results/metrics.json"]
    assert artifacts.list_runs(lake) == ["frozen-run"]
    out = artifacts.export(lake, "frozen-run", "results/metrics.json", tmp_path / "out")
    assert out.read_bytes() == metrics
    summary = artifacts.run_summary(lake, "frozen-run")
    assert summary["files"] == 3 and summary["unique_bytes"] < summary["logical_bytes"]
    with pytest.raises(LakeError, match="no artifact results/curve.png"):
        artifacts.read(lake, "frozen-run", artifacts.RESULTS, "curve.png")
    with pytest.raises(ConfigError, match="should look like"):
        artifacts.parse_name("metrics.json")
    with pytest.raises(ConfigError, match="invalid run name"):
        artifacts.run_dataset("a/b", "checkpoints")


def test_artifacts_cli_lists_and_exports_with_exit_codes(tmp_path, frozen_run):
    lake, _, _ = frozen_run
    for _ in range(2):  # exit codes must be deterministic (native libraries can abort at exit)
        listed = subprocess.run([CLI, "artifacts", "list", "--lake", lake.uri, "--run", "frozen-run", "--json"], capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr
        doc = json.loads(listed.stdout)
        assert [a["name"] for a in doc["artifacts"]] == ["checkpoints/epoch-0001.pt", "checkpoints/epoch-0002.pt"]
        assert doc["runs"]["frozen-run"]["dedup_ratio"] > 1.05  # the frozen layers are stored once
    exported = subprocess.run(
        [CLI, "artifacts", "export", "checkpoints/epoch-0002.pt", "--lake", lake.uri, "--run", "frozen-run", "--out", str(tmp_path / "x") + "/"],
        capture_output=True, text=True,
    )
    assert exported.returncode == 0, exported.stderr
    data = (tmp_path / "x" / "epoch-0002.pt").read_bytes()
    assert data == artifacts.read(lake, "frozen-run", artifacts.CHECKPOINTS, "epoch-0002.pt")
    missing = subprocess.run([CLI, "artifacts", "export", "results/curve.png", "--lake", lake.uri, "--run", "frozen-run"], capture_output=True, text=True)
    assert missing.returncode == 2 and "no artifact results/curve.png" in missing.stderr


def test_digits_are_written_as_a_stratified_deterministic_image_folder(tmp_path):
    first = write_digits(tmp_path / "a", limit_per_class=10, val_fraction=0.2, seed=3)
    second = write_digits(tmp_path / "b", limit_per_class=10, val_fraction=0.2, seed=3)
    assert (first.train, first.val) == (second.train, second.val) == (80, 20)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b
    assert all(hashlib.sha256((tmp_path / "a" / p).read_bytes()).digest() == hashlib.sha256((tmp_path / "b" / p).read_bytes()).digest() for p in files_a)
    for digit in range(10):
        assert len(list((tmp_path / "a" / "val" / str(digit)).glob("*.png"))) == 2
    from PIL import Image

    img = Image.open(tmp_path / "a" / files_a[0])
    assert img.size == (8, 8) and img.mode == "L"
    with pytest.raises(ConfigError, match="not empty"):
        write_digits(tmp_path / "a")
    full = write_digits(tmp_path / "full", scale=2)
    assert full.train + full.val == 1797 and full.image_size == 16
