"""Distributed CNN training on Spark executors: one function (:func:`train_rank`) run by every rank
under either launcher (:mod:`cnnspark.launchers`), reading its own shard of the lake through
Petastorm (:func:`cnnspark.data.make_torch_dataloader`).

Per rank: set up the launcher's collectives, build the model for the dataset (input channels and
size from the data, outputs from its label mapping), receive the initial model and optimizer
state from rank 0 (fresh, or the last checkpoint with ``resume``), wrap the optimizer
(``hvd.DistributedOptimizer``) or the model (DDP), and train. The learning rate is ``lr`` per
rank, scaled by the number of ranks after a linear warm-up, then cosine-annealed. Shards differ
by at most one file, so at each step the ranks agree (a one-number allreduce) whether anyone has
a batch left; a rank that has run out takes a zero-weight step so the gradient allreduce still
matches, and every file is trained on exactly once per epoch. Loss, accuracy and images per
second are summed over ranks with allreduce.

Rank 0 evaluates on the validation split, prints one line per epoch, and writes the artifacts
(:mod:`cnnspark.artifacts`): a checkpoint per epoch (model and optimizer state, epoch, metrics
history, config, label mapping), ``results/metrics.json`` after each checkpoint, and
``results/curve.png`` plus any requested feature maps at the end. Only rank 0 writes the lake.

The driver side is :func:`train`: it checks the lake and the run, resolves what the data decides
(image size, channels, classes), runs the launcher, and copies metrics.json and curve.png to a
local folder when asked.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnspark import artifacts
from cnnspark.errors import ConfigError, LakeError
from cnnspark.lake import Lake

if TYPE_CHECKING:
    import torch

    from cnnspark.launchers import Comm

AUTO = "auto"
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINT_FORMAT = "cnnspark-checkpoint/1"
# Bytes of decoded images a rank keeps in its shuffling buffer (Petastorm's rows arrive grouped
# by row group, i.e. by folder; the buffer mixes classes within a batch).
SHUFFLE_BUFFER_BYTES = 256 * 1024 * 1024
MAX_SHUFFLE_ROWS = 10_000
MAX_IMAGE_SIZE = 224


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run takes. Plain strings and numbers: it travels to every rank.

    Zero/empty values of ``image_size``, ``channels``, ``run`` and ``features_split`` mean
    "decide from the data" and are resolved by :func:`prepare` on the driver.
    """

    lake: str
    dataset: str
    epochs: int
    run: str = ""
    num_proc: int = 2
    launcher: str = "horovod"
    model: str = "cnn"
    split: str = "train"
    val_split: str = AUTO  # a split name, "auto" (use "val" when the dataset has it) or "" (none)
    image_size: int = 0
    channels: int = 0
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    freeze: tuple[str, ...] = ()
    resume: bool = False
    seed: int = 0
    workers: int = 2
    threads: int = 0  # torch threads per rank; 0: the machine's cores / ranks on it
    device: str = AUTO
    features: tuple[str, ...] = ()
    features_split: str = ""
    checkpoint_every: int = 1
    timeout_s: int = 1800
    trace_samples: bool = False
    # Resolved by prepare():
    num_classes: int = 0
    train_files: int = 0
    start_epoch: int = 1

    def check(self) -> None:
        """Raise ConfigError for values that cannot work, naming the flag."""
        from cnnspark.launchers import LAUNCHERS
        from cnnspark.models import MODELS

        rules = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.num_proc >= 1, f"--num-proc must be at least 1, got {self.num_proc}"),
            (self.launcher in LAUNCHERS, f"--launcher must be {' or '.join(LAUNCHERS)}, got {self.launcher!r}"),
            (self.model in MODELS, f"--model must be one of {', '.join(sorted(MODELS))}, got {self.model!r}"),
            (self.image_size >= 0, f"--image-size must be positive, got {self.image_size}"),
            (self.channels in (0, 1, 3, 4), f"--channels must be 1, 3 or 4, got {self.channels}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must not be negative, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must not be negative, got {self.warmup_epochs}"),
            (self.workers >= 1, f"--workers must be at least 1, got {self.workers}"),
            (self.threads >= 0, f"--threads must not be negative, got {self.threads}"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}"),
            (self.checkpoint_every >= 1, f"--checkpoint-every must be at least 1, got {self.checkpoint_every}"),
            (self.timeout_s >= 10, f"--timeout must be at least 10 seconds, got {self.timeout_s}"),
            (bool(self.dataset), "--dataset must not be empty"),
            (bool(self.split), "--split must not be empty"),
        ]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message)
        if self.run:
            artifacts.check_run_name(self.run)


@dataclass
class TrainResult:
    """What a finished run reports back to the driver."""

    run: str
    lake: str
    config: TrainConfig
    history: list[dict]
    start_epoch: int
    initial_digests: list[str]
    artifacts: list[str]
    seconds: float
    samples: dict[int, list[list[int]]] = field(default_factory=dict)
    local_files: list[str] = field(default_factory=list)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}

    def render(self) -> str:
        lines = [f"run {self.run}: {len(self.history)} epochs in the history, finished in {self.seconds:.1f} s"]
        if self.final:
            lines.append("  final " + format_epoch(self.final, self.config.epochs))
        lines.append(f"  artifacts in {self.lake}: " + (", ".join(self.artifacts) or "none"))
        for path in self.local_files:
            lines.append(f"  wrote {path}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Driver side


def default_run_name(dataset: str, model: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = "".join(c if c.isalnum() or c in "._-" else "-" for c in dataset).strip("-._") or "run"
    return f"{base}-{model}-{stamp}"


def _image_facts(lake: Lake, dataset: str, split: str) -> tuple[int, int]:
    """(image size, channels) that fit the split: its common size (<= 224) and 1 or 3 channels."""
    import numpy as np
    import pyarrow.compute as pc

    from cnnspark.tables import MANIFESTS

    table = lake.arrow(
        MANIFESTS, columns=["width", "height", "channels"], filter=(pc.field("dataset") == dataset) & (pc.field("split") == split)
    )
    widths = [w for w in table.column("width").to_pylist() if w]
    heights = [h for h in table.column("height").to_pylist() if h]
    sides = [max(w, h) for w, h in zip(widths, heights, strict=False)]
    size = int(np.median(sides)) if sides else MAX_IMAGE_SIZE
    channels = [c for c in table.column("channels").to_pylist() if c]
    return min(size, MAX_IMAGE_SIZE), (1 if channels and all(c == 1 for c in channels) else 3)


def prepare(config: TrainConfig) -> TrainConfig:
    """Check the lake, dataset and run, and fill in what the data decides. Runs on the driver."""
    from cnnspark.data import label_mapping, split_paths

    config.check()
    lake = Lake(config.lake)
    lake.require()
    config = replace(config, lake=lake.uri, run=config.run or default_run_name(config.dataset, config.model))
    train_paths = split_paths(lake, config.dataset, config.split)
    if not train_paths:
        raise LakeError(
            f"dataset {config.dataset!r} has no files in split {config.split!r} in {lake.uri}; "
            f"ingest them with `cnnspark ingest SOURCE --lake {lake.uri} --dataset {config.dataset} --split {config.split}`"
        )
    if len(train_paths) < config.num_proc:
        raise ConfigError(f"split {config.split!r} has {len(train_paths)} files, fewer than --num-proc {config.num_proc}; use fewer processes")
    val_split = config.val_split
    if val_split == AUTO:
        val_split = "val" if config.split != "val" and split_paths(lake, config.dataset, "val") else ""
    elif val_split and not split_paths(lake, config.dataset, val_split):
        raise LakeError(f"dataset {config.dataset!r} has no files in the validation split {val_split!r}; ingest it or drop --val-split")
    labels = label_mapping(lake, config.dataset)
    if len(labels) < 2:
        raise ConfigError(
            f"dataset {config.dataset!r} has {len(labels)} label(s); training a classifier needs at least 2 "
            "(ingest with --labels dirname from an ImageFolder layout, or --labels csv:PATH)"
        )
    size, channels = _image_facts(lake, config.dataset, config.split)
    requested = {"image_size": config.image_size, "channels": config.channels}
    config = replace(
        config,
        val_split=val_split,
        image_size=config.image_size or size,
        channels=config.channels or channels,
        num_classes=len(labels),
        train_files=len(train_paths),
        features_split=config.features_split or val_split or config.split,
    )
    _check_layers(config)
    done = artifacts.checkpoint_epochs(lake, config.run)
    if config.resume:
        if not done:
            raise ConfigError(f"--resume: run {config.run!r} has no checkpoint in {lake.uri}; start it without --resume")
        stored = artifacts.load_checkpoint(lake, config.run)["config"]
        for key in ("model", "image_size", "channels", "num_classes", "dataset", "freeze"):
            mine, theirs = getattr(config, key), stored.get(key)
            if key == "freeze":
                mine, theirs = tuple(mine), tuple(theirs or ())
            if key in ("image_size", "channels") and not requested[key]:
                config = replace(config, **{key: theirs})  # a resumed run keeps its own input shape
                continue
            if mine != theirs:
                raise ConfigError(
                    f"--resume: run {config.run!r} was trained with {key}={theirs!r}, not {mine!r}; "
                    "resume with the same settings or start a new --run"
                )
        if done[-1] >= config.epochs:
            raise ConfigError(f"--resume: run {config.run!r} already finished epoch {done[-1]}; pass --epochs above {done[-1]} to train more")
        config = replace(config, start_epoch=done[-1] + 1)
    elif done:
        raise ConfigError(
            f"run {config.run!r} already has checkpoints (epochs {done[0]}-{done[-1]}) in {lake.uri}; "
            "pass --resume to continue it or choose another --run"
        )
    return config


def _check_layers(config: TrainConfig) -> None:
    """Fail on the driver, before any process starts, when --freeze/--features name no layer."""
    from cnnspark.models import find_layer, get_model

    if not (config.freeze or config.features):
        return
    model = get_model(config.model, in_channels=config.channels, num_classes=config.num_classes, image_size=config.image_size)
    for flag, names in (("--freeze", config.freeze), ("--features", config.features)):
        for name in names:
            try:
                find_layer(model, name)
            except ConfigError as e:
                raise ConfigError(f"{flag}: {e}") from None
    if all(not p.requires_grad for p in model.parameters()) or (config.freeze and _all_frozen(model, config.freeze)):
        raise ConfigError(f"--freeze {','.join(config.freeze)} freezes every layer of {config.model}; leave some layers trainable")


def _all_frozen(model, prefixes: tuple[str, ...]) -> bool:
    return all(any(n == p or n.startswith(p + ".") for p in prefixes) for n, _ in model.named_parameters())


def local_slots(master: str) -> int | None:
    """Task slots of a ``local[N]`` / ``local[*]`` master; None for cluster masters."""
    import re

    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", master.strip())
    if not match:
        return None
    value = match.group(1)
    if value == "*":
        return os.cpu_count() or 1
    return int(value or 1)


def train(
    config: TrainConfig,
    *,
    spark=None,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = print,
) -> TrainResult:
    """Train ``config`` on ``config.num_proc`` ranks of the active Spark session; see the module doc.

    ``out``: a local folder that receives copies of metrics.json and curve.png.
    """
    from cnnspark import launchers
    from cnnspark.session import get_spark

    started = time.monotonic()
    spark = spark or get_spark("cnnspark train")
    config = prepare(config)
    slots = local_slots(spark.sparkContext.master)
    if slots is not None and config.num_proc > slots:
        raise ConfigError(
            f"--num-proc {config.num_proc} needs {config.num_proc} Spark task slots at once, but the master "
            f"{spark.sparkContext.master} has {slots}; use fewer processes or more cores"
        )
    use_gpu = config.device == "cuda" or (
        config.device == AUTO and config.launcher == "torch" and bool(spark.conf.get("spark.task.resource.gpu.amount", ""))
    )
    if progress:
        first = f"the checkpoint of epoch {config.start_epoch - 1}" if config.resume else "a fresh model"
        progress(
            f"training run {config.run}: {config.model} on {config.dataset}/{config.split} ({config.train_files} files, "
            f"{config.num_classes} classes, {config.channels}x{config.image_size}x{config.image_size}) with "
            f"{config.num_proc} {config.launcher} processes, epochs {config.start_epoch}-{config.epochs} from {first}"
            + (f", validating on {config.val_split}" if config.val_split else ", no validation split")
        )
    raw = launchers.run(
        partial(train_rank, config), num_proc=config.num_proc, launcher=config.launcher, timeout_s=config.timeout_s, use_gpu=use_gpu
    )
    lake = Lake(config.lake)
    result = TrainResult(
        run=config.run,
        lake=lake.uri,
        config=config,
        history=raw["history"],
        start_epoch=raw["start_epoch"],
        initial_digests=raw["initial_digests"],
        artifacts=raw["artifacts"],
        seconds=time.monotonic() - started,
        samples={int(k): v for k, v in raw.get("samples", {}).items()},
    )
    if out is not None:
        for name in (f"{artifacts.RESULTS}/{artifacts.METRICS_FILE}", f"{artifacts.RESULTS}/{artifacts.CURVE_FILE}"):
            Path(out).mkdir(parents=True, exist_ok=True)
            result.local_files.append(str(artifacts.export(lake, config.run, name, Path(out))))
    return result


# ---------------------------------------------------------------------------------------------
# Rank side


def format_epoch(record: dict, epochs: int) -> str:
    text = (
        f"epoch {record['epoch']}/{epochs}  loss {record['train_loss']:.4f}  acc {100 * record['train_accuracy']:.2f}%"
    )
    if record.get("val_accuracy") is not None:
        text += f"  val_loss {record['val_loss']:.4f}  val_acc {100 * record['val_accuracy']:.2f}%"
    return text + f"  {record['images_per_second']:.0f} img/s  {record['seconds']:.1f} s"


def state_digest(model: torch.nn.Module) -> str:
    """XXH3-128 over the model's state dict (names, dtypes, shapes, bytes): equal iff same weights."""
    import torch
    import xxhash

    h = xxhash.xxh3_128()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def sample_fingerprint(image, label: int) -> int:
    """A 64-bit id of one decoded sample (image bytes and label): traces which rank saw what."""
    import xxhash

    return xxhash.xxh3_64_intdigest(image.tobytes() + int(label).to_bytes(8, "little", signed=True))


def learning_rate(config: TrainConfig, size: int, progress: float) -> float:
    """The rate at ``progress`` epochs into the run: linear warm-up from ``lr`` to ``lr * size``
    over ``warmup_epochs``, then cosine annealing to zero at ``epochs``."""
    peak = config.lr * size
    warmup = min(config.warmup_epochs, max(0.0, config.epochs - 1e-9))
    if progress < warmup:
        return config.lr + (peak - config.lr) * progress / warmup
    span = max(1e-9, config.epochs - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / span)))


def _device(config: TrainConfig, comm: Comm) -> torch.device:
    import torch

    wants_cuda = config.device == "cuda" or (config.device == AUTO and torch.cuda.is_available())
    if wants_cuda and comm.name == "horovod":
        import horovod.torch as hvd

        if not (hvd.cuda_built() or hvd.rocm_built()):
            if config.device == "cuda":
                raise ConfigError("--device cuda: this Horovod was built without GPU support; use --launcher torch or --device cpu")
            wants_cuda = False
    if wants_cuda:
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no GPU is visible to this rank")
        index = comm.local_rank % torch.cuda.device_count() if comm.name == "horovod" else torch.cuda.current_device()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _loader(config: TrainConfig, *, split: str, shard: tuple[int, int] | None, shuffle: bool, seed: int, batch_size: int):
    from cnnspark.data import make_torch_dataloader

    per_image = 4 * max(1, config.channels) * config.image_size * config.image_size
    capacity = min(MAX_SHUFFLE_ROWS, max(4 * batch_size, SHUFFLE_BUFFER_BYTES // per_image)) if shuffle else 0
    return make_torch_dataloader(
        config.lake,
        config.dataset,
        split=split,
        image_size=config.image_size,
        channels=config.channels,
        cur_shard=shard[0] if shard else None,
        shard_count=shard[1] if shard else None,
        num_epochs=1,
        shuffle=shuffle,
        seed=seed,
        workers=config.workers,
        batch_size=batch_size,
        shuffling_queue_capacity=capacity,
    )


def _train_epoch(config: TrainConfig, comm: Comm, model, net, optimizer, device, epoch: int, steps_per_epoch: int) -> dict:
    """One pass over this rank's shard; returns this rank's sums (and sample ids when traced)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from cnnspark.models import set_train_mode

    np.random.seed((config.seed * 1_000_003 + epoch * 101 + comm.rank) % 2**32)
    set_train_mode(model, config.freeze)
    loss_sum, correct, count, step, lr = 0.0, 0, 0, 0, 0.0
    seen: list[int] = []
    last_images = None
    started = time.monotonic()
    with _loader(config, split=config.split, shard=(comm.rank, comm.size), shuffle=True, seed=config.seed * 1000 + epoch, batch_size=config.batch_size) as loader:
        batches = iter(loader)
        while True:
            batch = next(batches, None)
            if batch is not None and len(batch["label"]) == 0:
                continue
            if comm.size > 1 and comm.allreduce([0.0 if batch is None else 1.0], "max")[0] == 0.0:
                break
            if comm.size == 1 and batch is None:
                break
            lr = learning_rate(config, comm.size, (epoch - 1) + min(step, steps_per_epoch) / max(1, steps_per_epoch))
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad()
            if batch is None:
                # This rank's shard is done but another's is not: a zero-weight step keeps the
                # gradient allreduce matched without changing the average's direction.
                model.eval()
                if last_images is None:
                    last_images = torch.zeros((1, config.channels, config.image_size, config.image_size), device=device)
                loss = net(last_images[:1]).sum() * 0.0
                loss.backward()
                optimizer.step()
                set_train_mode(model, config.freeze)
            else:
                images = batch["image"].to(device, non_blocking=True)
                labels = batch["label"].to(device, non_blocking=True)
                if bool((labels < 0).any()):
                    raise LakeError(f"dataset {config.dataset!r} split {config.split!r} has unlabeled files; training needs a label for every file")
                logits = net(images)
                loss = F.cross_entropy(logits, labels)
                loss.backward()
                optimizer.step()
                n = len(labels)
                loss_sum += float(loss.detach()) * n
                correct += int((logits.detach().argmax(1) == labels).sum())
                count += n
                last_images = images
                if config.trace_samples:
                    seen.extend(sample_fingerprint(img, lab) for img, lab in zip(batch["image"].numpy(), batch["label"].tolist(), strict=True))
            step += 1
    return {"loss_sum": loss_sum, "correct": correct, "count": count, "seconds": time.monotonic() - started, "seen": seen, "lr": lr}


def evaluate(config: TrainConfig, model, device, split: str) -> dict:
    """Loss and accuracy of ``model`` on a whole split (one process, no shuffling)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad(), _loader(config, split=split, shard=None, shuffle=False, seed=0, batch_size=256) as loader:
        for batch in loader:
            labels = batch["label"].to(device)
            keep = labels >= 0
            if not bool(keep.any()):
                continue
            logits = model(batch["image"].to(device))[keep]
            labels = labels[keep]
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            count += len(labels)
    return {"val_loss": loss_sum / max(1, count), "val_accuracy": correct / max(1, count), "val_images": count}


def _save(config: TrainConfig, lake: Lake, model, optimizer, epoch: int, history: list[dict], labels: dict[str, int]) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model_name": config.model,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": history,
        "config": _config_dict(config),
        "labels": labels,
    }
    artifacts.save_checkpoint(lake, config.run, epoch, state)
    artifacts.put(lake, config.run, artifacts.RESULTS, {artifacts.METRICS_FILE: metrics_json(config, history)}, format="json")


def _config_dict(config: TrainConfig) -> dict:
    data = asdict(config)
    data["freeze"] = list(config.freeze)
    data["features"] = list(config.features)
    return data


def metrics_json(config: TrainConfig, history: list[dict]) -> bytes:
    """The run's metrics file: settings and one record per epoch (deterministic bytes)."""
    doc = {
        "run": config.run,
        "dataset": config.dataset,
        "split": config.split,
        "val_split": config.val_split or None,
        "model": config.model,
        "launcher": config.launcher,
        "num_proc": config.num_proc,
        "batch_size_per_rank": config.batch_size,
        "lr_per_rank": config.lr,
        "epochs": history,
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def curve_png(history: list[dict], *, title: str) -> bytes:
    """A two-panel PNG (loss; accuracy) of the per-epoch history."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.6), dpi=100)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train")
    if any(r.get("val_accuracy") is not None for r in history):
        val = [r for r in history if r.get("val_accuracy") is not None]
        ax_loss.plot([r["epoch"] for r in val], [r["val_loss"] for r in val], "s-", label="validation")
        ax_acc.plot([r["epoch"] for r in val], [100 * r["val_accuracy"] for r in val], "s-", label="validation")
    from matplotlib.ticker import MaxNLocator

    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def export_features(
    config: TrainConfig,
    model: torch.nn.Module,
    *,
    layers: tuple[str, ...] | list[str],
    split: str,
    epoch: int,
    device: torch.device | None = None,
    batch_files: int = 512,
) -> dict[str, int]:
    """Store the feature maps of ``layers`` for every file of ``split`` as artifacts of the run:
    ``features/<split>/<layer>/epoch-NNNN/<relative path>.npy`` (float32, one per file). Files
    whose maps did not change (frozen layers, same weights) share their chunks. Returns the
    number of files stored per layer."""
    import io

    import numpy as np
    import torch

    from cnnspark.data import make_reader
    from cnnspark.models import find_layer

    device = device or torch.device("cpu")
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for layer in layers:
        module = find_layer(model, layer)
        hooks.append(module.register_forward_hook(lambda _m, _i, out, name=layer: captured.__setitem__(name, out.detach())))
    lake = Lake(config.lake)
    pending: dict[str, dict[str, bytes]] = {layer: {} for layer in layers}
    stored = {layer: 0 for layer in layers}

    def flush(layer: str) -> None:
        if pending[layer]:
            artifacts.put(lake, config.run, artifacts.features_kind(split, layer), pending[layer], format="npy")
            stored[layer] += len(pending[layer])
            pending[layer] = {}

    model.eval()
    try:
        with torch.no_grad(), make_reader(
            config.lake, config.dataset, split=split, image_size=config.image_size, channels=config.channels,
            shuffle=False, num_epochs=1, with_path=True, workers=config.workers,
        ) as reader:
            for batch in reader:
                model(torch.from_numpy(np.ascontiguousarray(batch.image)).to(device))
                for layer in layers:
                    maps = captured[layer].float().cpu().numpy()
                    for rel, fmap in zip(batch.relative_path, maps, strict=True):
                        buffer = io.BytesIO()
                        np.save(buffer, np.ascontiguousarray(fmap), allow_pickle=False)
                        pending[layer][f"epoch-{epoch:04d}/{rel}.npy"] = buffer.getvalue()
                    if len(pending[layer]) >= batch_files:
                        flush(layer)
        for layer in layers:
            flush(layer)
    finally:
        for hook in hooks:
            hook.remove()
    return stored


def features_from_checkpoint(
    lake: Lake | str, run: str, *, layers: tuple[str, ...] | list[str], split: str | None = None, epoch: int | None = None
) -> dict[str, int]:
    """Load a stored checkpoint on this machine and store the feature maps of ``layers`` for
    ``split`` (default: the run's validation split, else its training split). No Spark needed.
    Returns files stored per artifact kind (``features/<split>/<layer>``)."""
    from cnnspark.models import get_model

    lake = lake if isinstance(lake, Lake) else Lake(lake)
    ckpt = artifacts.load_checkpoint(lake, run, epoch)
    fields = {f for f in TrainConfig.__dataclass_fields__}
    stored = {k: v for k, v in ckpt["config"].items() if k in fields}
    config = TrainConfig(**{**stored, "lake": lake.uri, "freeze": tuple(stored.get("freeze", ())), "features": tuple(layers)})
    split = split or config.val_split or config.split
    model = get_model(config.model, in_channels=config.channels, num_classes=config.num_classes, image_size=config.image_size)
    model.load_state_dict(ckpt["model"])
    counts = export_features(config, model, layers=layers, split=split, epoch=int(ckpt["epoch"]))
    return {artifacts.features_kind(split, layer): n for layer, n in counts.items()}


def train_rank(config: TrainConfig, comm: Comm) -> dict[str, Any]:
    """The per-rank training function both launchers run (see the module doc). Rank 0's return
    value (history, artifacts written, initial weight digests of every rank, traced samples)
    reaches the driver."""
    import torch

    from cnnspark.data import label_mapping
    from cnnspark.models import freeze, get_model

    threads = config.threads or max(1, (os.cpu_count() or 1) // max(1, comm.local_size))
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    device = _device(config, comm)
    lake = Lake(config.lake)
    labels = label_mapping(lake, config.dataset, update=False)
    model = get_model(config.model, in_channels=config.channels, num_classes=config.num_classes, image_size=config.image_size).to(device)
    freeze(model, config.freeze)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError(f"--freeze {','.join(config.freeze)} freezes every layer of {config.model}; leave some layers trainable")
    optimizer = torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.momentum > 0)

    # Initial state from rank 0: the last checkpoint when resuming, else rank 0's fresh weights.
    payload = None
    if comm.rank == 0 and config.resume:
        ckpt = artifacts.load_checkpoint(lake, config.run, map_location="cpu")
        payload = {"model": ckpt["model"], "optimizer": ckpt["optimizer"], "epoch": ckpt["epoch"], "history": ckpt["history"]}
    payload = comm.broadcast_object(payload, root=0)
    history: list[dict] = []
    start = 1
    if payload is not None:
        model.load_state_dict(payload["model"])
        history, start = list(payload["history"]), int(payload["epoch"]) + 1
    else:
        comm.broadcast_model(model)
    net, optimizer = comm.distribute(model, optimizer, device=device)
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
    del payload
    digests = comm.allgather_object(state_digest(model))

    steps_per_epoch = math.ceil(math.ceil(config.train_files / comm.size) / config.batch_size)
    samples: dict[int, list[list[int]]] = {}
    written: list[str] = []
    for epoch in range(start, config.epochs + 1):
        part = _train_epoch(config, comm, model, net, optimizer, device, epoch, steps_per_epoch)
        loss_sum, correct, count = comm.allreduce([part["loss_sum"], part["correct"], part["count"]], "sum")
        slowest = comm.allreduce([part["seconds"]], "max")[0]
        if config.trace_samples:
            samples[epoch] = comm.allgather_object(part["seen"])
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / max(1, count),
            "train_accuracy": correct / max(1, count),
            "train_images": int(count),
            "images_per_second": count / max(1e-9, slowest),
            "lr": part["lr"],
            "ranks": comm.size,
        }
        if comm.rank == 0:
            val_started = time.monotonic()
            if config.val_split:
                record.update(evaluate(config, model, device, config.val_split))
            else:
                record.update({"val_loss": None, "val_accuracy": None, "val_images": 0})
            record["seconds"] = slowest + (time.monotonic() - val_started)
            history.append(record)
            print(format_epoch(record, config.epochs), flush=True)
            if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
                _save(config, lake, model, optimizer, epoch, history, labels)
                written.append(f"{artifacts.CHECKPOINTS}/{artifacts.checkpoint_name(epoch)}")

    if comm.rank == 0:
        title = f"{config.run}: {config.model} on {config.dataset} ({config.num_proc} x {config.launcher})"
        artifacts.put(lake, config.run, artifacts.RESULTS, {artifacts.CURVE_FILE: curve_png(history, title=title)}, format="png")
        written += [f"{artifacts.RESULTS}/{artifacts.METRICS_FILE}", f"{artifacts.RESULTS}/{artifacts.CURVE_FILE}"]
        if config.features:
            counts = export_features(config, model, layers=config.features, split=config.features_split, epoch=config.epochs, device=device)
            written += [f"{artifacts.features_kind(config.features_split, layer)}/epoch-{config.epochs:04d}/ ({n} files)" for layer, n in counts.items()]
    comm.allreduce([0.0], "sum")  # every rank waits until rank 0 has written the artifacts
    return {
        "run": config.run,
        "start_epoch": start,
        "history": history,
        "initial_digests": digests,
        "artifacts": written,
        "samples": samples,
    }
