"""``cnnspark train`` (distributed training on Spark executors) and ``cnnspark artifacts``
(list, export and feature maps of a run's stored checkpoints and results)."""

from __future__ import annotations

import argparse
import json
import sys


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def register(sub: argparse._SubParsersAction) -> None:
    from cnnspark.launchers import DEFAULT_TIMEOUT_S, LAUNCHERS
    from cnnspark.models import DEFAULT_MODEL, MODELS
    from cnnspark.train import DEVICES, TrainConfig

    d = TrainConfig(lake="", dataset="", epochs=1)
    p = sub.add_parser(
        "train",
        help="train a CNN on a dataset of the lake with Horovod or TorchDistributor on Spark executors",
        description="Train a CNN in parallel on Spark executors: each of --num-proc processes reads its own shard of the "
        "dataset through Petastorm. Rank 0 validates, prints one line per epoch and stores checkpoints, "
        "metrics.json and curve.png in the lake as artifacts/<run>/... (see `cnnspark artifacts`).",
    )
    p.add_argument("--lake", required=True, help="lake folder or object-store URI")
    p.add_argument("--dataset", required=True, help="dataset to train on (labels from its ImageFolder folders or CSV)")
    p.add_argument("--split", default=d.split, help="training split (default: %(default)s)")
    p.add_argument("--val-split", default=d.val_split, help="validation split evaluated by rank 0 each epoch; 'auto' (default) uses 'val' when the dataset has it, 'none' turns validation off")
    p.add_argument("--epochs", type=int, required=True, help="train through this epoch (with --resume: the new last epoch)")
    p.add_argument("--num-proc", type=int, default=d.num_proc, help="training processes, one Spark task each (default: %(default)s)")
    p.add_argument("--launcher", choices=LAUNCHERS, default=d.launcher, help="horovod (horovod.spark.run) or torch (Spark's TorchDistributor with DDP); default %(default)s")
    p.add_argument("--model", choices=sorted(MODELS), default=DEFAULT_MODEL, help="network (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=0, help="images are resized to SxS (default: the split's common size, at most 224)")
    p.add_argument("--channels", type=int, choices=(1, 3, 4), default=0, help="input channels (default: 1 if every image is grayscale, else 3)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per batch per process (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate per process; scaled by --num-proc after warm-up (default: %(default)s)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum, Nesterov (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="(default: %(default)s)")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warm-up to the scaled rate (default: %(default)s)")
    p.add_argument("--run", default="", help="run name; artifacts go to artifacts/<run>/ (default: <dataset>-<model>-<UTC time>)")
    p.add_argument("--resume", action="store_true", help="continue --run from its last checkpoint")
    p.add_argument("--freeze", type=_names, default=(), help="comma-separated layers not to train, e.g. features.conv1,features.conv2")
    p.add_argument("--features", type=_names, default=(), help="comma-separated layers whose feature maps are stored at the end, e.g. features.conv4")
    p.add_argument("--features-split", default="", help="split whose feature maps are stored (default: the validation split)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="store a checkpoint every K epochs and at the end (default: %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="Petastorm decode workers per process (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (default: cores / processes on the machine)")
    p.add_argument("--device", choices=DEVICES, default=d.device, help="auto: one GPU per process when present, else CPU (default)")
    p.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    p.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S, help="seconds a process may wait for the others before the job stops (default: %(default)s)")
    p.add_argument("--out", default=None, help="also write metrics.json and curve.png into this local folder")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(handler=run_train)

    a = sub.add_parser(
        "artifacts",
        help="list, export or add feature maps to a training run's artifacts",
        description="Artifacts are stored in the lake as datasets artifacts/<run>/checkpoints, artifacts/<run>/results and "
        "artifacts/<run>/features/<split>/<layer>; chunks shared between them are stored once.",
    )
    asub = a.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = asub.add_parser("list", help="list runs, or one run's artifacts with sizes and what is stored once")
    ls.add_argument("--lake", required=True)
    ls.add_argument("--run", default=None, help="one run (default: every run)")
    ls.add_argument("--json", action="store_true", help="print JSON on stdout")
    ls.set_defaults(handler=run_list)
    ex = asub.add_parser("export", help="write one artifact to a local file")
    ex.add_argument("name", metavar="NAME", help="as listed: checkpoints/epoch-0003.pt, results/metrics.json, results/curve.png, ...")
    ex.add_argument("--lake", required=True)
    ex.add_argument("--run", required=True)
    ex.add_argument("--out", default=".", help="file or folder to write (default: the current folder)")
    ex.set_defaults(handler=run_export)
    fe = asub.add_parser("features", help="store the feature maps of layers for a split, from a stored checkpoint (no Spark)")
    fe.add_argument("--lake", required=True)
    fe.add_argument("--run", required=True)
    fe.add_argument("--layer", type=_names, required=True, help="comma-separated layer names, e.g. features.conv4")
    fe.add_argument("--split", default="", help="split to run through the model (default: the run's validation split)")
    fe.add_argument("--epoch", type=int, default=None, help="checkpoint epoch (default: the last)")
    fe.set_defaults(handler=run_features)


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the ``train`` flags describe."""
    from cnnspark.train import TrainConfig

    return TrainConfig(
        lake=args.lake, dataset=args.dataset, split=args.split,
        val_split="" if args.val_split.lower() == "none" else args.val_split,
        epochs=args.epochs, num_proc=args.num_proc, launcher=args.launcher, model=args.model,
        image_size=args.image_size, channels=args.channels, batch_size=args.batch_size, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        run=args.run, resume=args.resume, freeze=args.freeze, features=args.features,
        features_split=args.features_split, checkpoint_every=args.checkpoint_every, workers=args.workers,
        threads=args.threads, device=args.device, seed=args.seed, timeout_s=args.timeout,
    )


def run_train(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from cnnspark.launchers import release_barrier_timer
    from cnnspark.session import get_spark
    from cnnspark.train import train

    config = config_from_args(args)
    config.check()
    spark = get_spark("cnnspark train")
    try:
        result = train(config, spark=spark, out=args.out, progress=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        if config.launcher == "torch":
            # The command ends here: let spark-submit's JVM exit (see release_barrier_timer).
            release_barrier_timer(spark)
    if args.json:
        doc = {
            "run": result.run, "lake": result.lake, "seconds": result.seconds, "start_epoch": result.start_epoch,
            "history": result.history, "artifacts": result.artifacts, "local_files": result.local_files,
            "config": asdict(result.config),
        }
        print(json.dumps(doc, indent=2, sort_keys=True, default=str))
    else:
        print(result.render())
        if not args.out:
            print(
                f"  export them with `cnnspark artifacts export --lake {result.lake} --run {result.run} results/metrics.json --out DIR`"
            )
    return 0


def run_list(args: argparse.Namespace) -> int:
    from cnnspark.artifacts import list_artifacts, run_summary
    from cnnspark.lake import Lake
    from cnnspark.sizes import format_size

    lake = Lake(args.lake)
    lake.require()
    found = list_artifacts(lake, args.run)
    runs = sorted({a.run for a in found})
    summaries = {run: run_summary(lake, run) for run in runs}
    if args.json:
        doc = {
            "runs": {run: summaries[run] for run in runs},
            "artifacts": [
                {"run": a.run, "name": a.name, "dataset": a.dataset, "size": a.size, "chunks": a.chunks, "stored_at": a.stored_at.isoformat()}
                for a in found
            ],
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    if not found:
        print(f"no artifacts{' of run ' + repr(args.run) if args.run else ''} in {lake.uri}")
        return 0 if not args.run else 2
    for run in runs:
        s = summaries[run]
        print(
            f"run {run}: {s['files']} artifacts, {format_size(s['logical_bytes'])} logical, "
            f"{format_size(s['unique_bytes'])} in unique chunks ({s['dedup_ratio']:.2f}x)"
        )
        if args.run or len(runs) == 1:
            for a in (x for x in found if x.run == run):
                print(f"  {a.name:<48} {format_size(a.size):>10}  {a.chunks:>5} chunks  {a.stored_at:%Y-%m-%d %H:%M:%S}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from cnnspark.artifacts import export
    from cnnspark.lake import Lake

    lake = Lake(args.lake)
    lake.require()
    print(export(lake, args.run, args.name, args.out))
    return 0


def run_features(args: argparse.Namespace) -> int:
    from cnnspark.lake import Lake
    from cnnspark.train import features_from_checkpoint

    lake = Lake(args.lake)
    lake.require()
    counts = features_from_checkpoint(lake, args.run, layers=args.layer, split=args.split or None, epoch=args.epoch)
    for kind, n in counts.items():
        print(f"stored {n} feature maps as artifacts/{args.run}/{kind}")
    return 0
