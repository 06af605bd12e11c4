"""cnnspark: store image training data once, as content-defined chunks in Delta Lake, and train
CNNs on it with Spark, Petastorm and Horovod.

The public surface:

- :class:`cnnspark.lake.Lake`: a lake's three Delta tables (chunks, manifests, quarantine).
- :func:`cnnspark.ingest.ingest`: the Spark ingest job as a function.
- :mod:`cnnspark.errors`: the error hierarchy every command reports through.
"""

__version__ = "0.1.0"

from cnnspark.errors import CnnsparkError  # noqa: E402

__all__ = ["CnnsparkError", "__version__"]
