"""The ``cnnspark`` command line: one subcommand per job; each parses flags and calls the library.

Exit codes: 0 success, 1 a check failed (e.g. verify found corruption), 2 bad input or a
missing lake/table (the message says what to do), 3 an unexpected error (traceback shown).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import import_module

from cnnspark import __version__
from cnnspark.errors import CnnsparkError

# Each module in cnnspark/commands/ has register(subparsers): it adds its subcommands and sets
# ``handler`` (a function of the parsed args returning an exit code) on each.
ON_DATABRICKS = "DATABRICKS_RUNTIME_VERSION" in os.environ
COMMAND_MODULES = ("ingest", "read", "stats", "demo", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnspark",
        description="Store image training data once in Delta Lake and train CNNs on it with Spark.",
    )
    parser.add_argument("--version", action="version", version=f"cnnspark {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        import_module(f"cnnspark.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command and return its exit code (never raises for user errors)."""
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
    except CnnsparkError as e:
        print(f"cnnspark {args.command}: error: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print(f"cnnspark {args.command}: interrupted", file=sys.stderr)
        code = 130
    return code


def run(argv: Sequence[str] | None = None) -> None:
    """Entry point for console scripts and jobs: a deterministic exit code.

    Native libraries (the JVM gateway, delta-rs) can abort at interpreter exit and replace the
    exit code (delta-rs issue 2184); flushing and leaving with os._exit keeps the code we chose.
    """
    code = 3
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors and --help
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - flushing the broken pipe must not raise
        code = 0
    except BaseException:  # noqa: BLE001 - report any crash with its traceback, then exit 3
        import traceback

        traceback.print_exc()
        code = 3
    _stop_spark()
    sys.stdout.flush()
    sys.stderr.flush()
    if ON_DATABRICKS:
        # A Databricks Python task owns its process: report failure by raising, success by returning.
        if code:
            raise SystemExit(code)
        return
    os._exit(code)


def _stop_spark() -> None:
    """Stop the session we ran on, except on Databricks, where the cluster owns it."""
    if "pyspark" not in sys.modules or ON_DATABRICKS:
        return
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
