"""spark-submit entry point for statistics: ``spark-submit jobs/stats.py --lake LAKE [--dataset NAME] [--json]``

Takes exactly the arguments of ``cnnspark stats``.
"""

from cnnspark.cli import run

if __name__ == "__main__":
    import sys

    run(["stats", *sys.argv[1:]])
