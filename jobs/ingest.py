"""spark-submit entry point for ingest: ``spark-submit jobs/ingest.py SOURCE --lake LAKE --dataset NAME ...``

Takes exactly the arguments of ``cnnspark ingest``.
"""

from cnnspark.cli import run

if __name__ == "__main__":
    import sys

    run(["ingest", *sys.argv[1:]])
