"""``cnnspark demo``: the main job on one machine (:func:`cnnspark.demo.run_demo`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from cnnspark.demo import DEFAULT_EPOCHS, DEFAULT_WORKDIR

    p = sub.add_parser(
        "demo",
        help="build a two-version image collection, ingest it, show dedup stats, train, verify, report",
        description="Build a demo collection from real images shipped with scikit-learn and scikit-image "
        "(digits as PNG and TIFF, photos as uncompressed TIFF; two versions), ingest both versions with the "
        "Spark jobs, print the Spark SQL deduplication statistics, train a CNN with 2 Horovod processes "
        "reading through Petastorm, verify the lake and write the HTML report. Re-running is idempotent "
        "(ingests commit nothing; training is skipped when the run already reached --epochs, resumed otherwise).",
    )
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="work folder for images, lake, report (default: %(default)s/)")
    p.add_argument("--clean", action="store_true", help="delete the work folder (images, lake, report) and exit; the next run starts from nothing")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="training epochs (default %(default)s)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cnnspark.demo import run_demo

    result = run_demo(args.workdir, clean=args.clean, epochs=args.epochs, out=lambda m: print(m, flush=True))
    return 0 if result.verify_ok else 1
