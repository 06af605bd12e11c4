"""spark-submit entry point for training: ``spark-submit jobs/train.py --lake LAKE --dataset NAME --epochs E --num-proc N ...``

Takes exactly the arguments of ``cnnspark train``. Under spark-submit the session spark-submit
configured is used (its master, executors and resources); each training process takes one task slot.
"""

from cnnspark.cli import run

if __name__ == "__main__":
    import sys

    run(["train", *sys.argv[1:]])
