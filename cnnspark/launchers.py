"""Run one function on N training processes (ranks) on Spark executors, with Horovod or with
Spark's TorchDistributor, and hand it a :class:`Comm` for collectives.

    result = run(partial(train_rank, config), num_proc=2, launcher="horovod")

``fn(comm)`` runs in every rank; rank 0's return value comes back. The two launchers:

``horovod``  ``horovod.spark.run(..., num_proc=N, use_gloo=True)`` on the active Spark context;
             each rank calls ``hvd.init()``; :class:`HorovodComm` wraps optimizers in
             ``hvd.DistributedOptimizer``.
``torch``    ``pyspark.ml.torch.distributor.TorchDistributor(num_processes=N, local_mode=False)``;
             each rank joins a ``torch.distributed`` process group (gloo on CPU, nccl on GPU) and
             :class:`TorchComm` wraps the model in ``DistributedDataParallel``.

Failures: a rank that raises prints one line ``cnnspark-rank-error: {json}`` (rank, error type,
message, traceback tail) on its stderr and re-raises. Both launchers stream rank output back to
the driver; :func:`run` watches the driver's output for that line and raises :class:`RankFailed`
with the first failing rank's own error, not the launcher's generic one (the peers' follow-on
"shut down"/"connection closed" errors are ranked below it). Horovod stops every rank when one
exits non-zero; TorchDistributor runs a barrier stage that Spark stops when one task fails. So a
failing rank ends the job instead of leaving the others waiting in a collective; as a last
resort every collective has a timeout (``timeout_s``).
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from cnnspark.errors import CnnsparkError, ConfigError

T = TypeVar("T")

LAUNCHERS = ("horovod", "torch")
DEFAULT_TIMEOUT_S = 1800
START_TIMEOUT_S = 600
MARKER = "cnnspark-rank-error:"
_TRACEBACK_LINES = 25
# Errors a rank sees because another rank failed first: reported only when nothing better is known.
_FOLLOW_ON = (
    "horovod has been shut down",
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "gloo",
    "socket timeout",
    "timed out",
    "nccl",
    "process group",
)


_USER_ERRORS = {"CnnsparkError", "ConfigError", "SourceError", "LakeError"}


class TrainingError(CnnsparkError):
    """Distributed training failed (exit code 3, like any unexpected error)."""

    exit_code = 3


class RankFailed(TrainingError):
    """A training rank raised; the message carries that rank's error."""

    def __init__(self, rank: int, error_type: str, message: str, trace: str = "") -> None:
        self.rank, self.error_type, self.message, self.trace = rank, error_type, message, trace
        if error_type in _USER_ERRORS:
            self.exit_code = 2  # bad input or a missing lake/table, found inside a rank
        text = f"training rank {rank} failed: {error_type}: {message}"
        if trace:
            text += "\n  rank traceback (last lines):\n" + "\n".join("    " + line for line in trace.rstrip().splitlines())
        super().__init__(text)


# ---------------------------------------------------------------------------------------------
# Collectives, one class per launcher


class Comm:
    """What a training function needs from its launcher: rank facts and a few collectives."""

    name = "single"
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    def allreduce(self, values: list[float], op: str = "sum") -> list[float]:
        """Elementwise ``sum`` or ``max`` of ``values`` over ranks (float64)."""
        return list(values)

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def distribute(self, model, optimizer, *, device):
        """Make ``model``/``optimizer`` average gradients over ranks; returns (model, optimizer)."""
        return model, optimizer

    def broadcast_model(self, model) -> None:
        """Copy rank 0's parameters and buffers to every rank."""

    def close(self) -> None:
        pass


class HorovodComm(Comm):
    """Horovod over gloo (or MPI/NCCL where Horovod was built with them)."""

    name = "horovod"

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()

    def allreduce(self, values: list[float], op: str = "sum") -> list[float]:
        import torch

        ops = {"sum": self.hvd.Sum, "max": self.hvd.Max}
        tensor = torch.tensor(values, dtype=torch.float64)
        return self.hvd.allreduce(tensor, op=ops[op], name=f"cnnspark.{op}.{len(values)}").tolist()

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        # Horovod names the tensors after type(obj) by default, which differs between the root
        # (the object) and the others (None) and would deadlock: name them explicitly.
        return self.hvd.broadcast_object(obj, root_rank=root, name="cnnspark.broadcast_object")

    def allgather_object(self, obj: Any) -> list[Any]:
        return self.hvd.allgather_object(obj, name="cnnspark.allgather_object")

    def broadcast_model(self, model) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    def distribute(self, model, optimizer, *, device):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return model, self.hvd.DistributedOptimizer(optimizer, named_parameters=named)

    def close(self) -> None:
        self.hvd.shutdown()


class TorchComm(Comm):
    """``torch.distributed`` as set up by TorchDistributor (RANK, WORLD_SIZE, MASTER_ADDR/PORT)."""

    name = "torch"

    def __init__(self, *, timeout_s: int) -> None:
        import torch
        import torch.distributed as dist

        self.dist = dist
        self.backend = "nccl" if torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES", "") != "" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(self.backend, timeout=timedelta(seconds=timeout_s))
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))

    def _device(self):
        import torch

        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def allreduce(self, values: list[float], op: str = "sum") -> list[float]:
        import torch

        ops = {"sum": self.dist.ReduceOp.SUM, "max": self.dist.ReduceOp.MAX}
        tensor = torch.tensor(values, dtype=torch.float64, device=self._device())
        self.dist.all_reduce(tensor, op=ops[op])
        return tensor.cpu().tolist()

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        box = [obj if self.rank == root else None]
        self.dist.broadcast_object_list(box, src=root, device=self._device())
        return box[0]

    def allgather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        self.dist.all_gather_object(out, obj)
        return out

    def broadcast_model(self, model) -> None:
        for tensor in model.state_dict().values():
            self.dist.broadcast(tensor, src=0)

    def distribute(self, model, optimizer, *, device):
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids), optimizer

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# What runs in each rank


def _report(rank: int, error: BaseException) -> None:
    """Print the one-line error record the driver looks for, then the full traceback."""
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    tail = "".join(lines).rstrip().splitlines()[-_TRACEBACK_LINES:]
    record = {"rank": rank, "type": type(error).__name__, "message": str(error), "traceback": "\n".join(tail), "time": time.time()}
    sys.stdout.flush()
    sys.stderr.write(f"{MARKER} {json.dumps(record)}\n")
    sys.stderr.flush()


class _RankMain:
    """The picklable entry point each launcher runs: set up the Comm, call ``fn``, report errors."""

    def __init__(self, fn: Callable[[Comm], Any], launcher: str, timeout_s: int) -> None:
        self.fn, self.launcher, self.timeout_s = fn, launcher, timeout_s

    def __call__(self) -> Any:
        rank = int(os.environ.get("HOROVOD_RANK", os.environ.get("RANK", "-1")))
        comm: Comm | None = None
        try:
            comm = HorovodComm() if self.launcher == "horovod" else TorchComm(timeout_s=self.timeout_s)
            rank = comm.rank
            result = self.fn(comm)
        except BaseException as e:
            _report(rank, e)
            raise
        if comm is not None:
            comm.close()
        return result


# ---------------------------------------------------------------------------------------------
# The driver side


class _ErrorWatch(io.TextIOBase):
    """A text stream that forwards everything to ``inner`` and keeps the rank error records."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner
        self.records: list[dict] = []
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        with self._lock:
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                at = line.find(MARKER)
                if at >= 0:
                    try:
                        self.records.append(json.loads(line[at + len(MARKER):]))
                    except ValueError:
                        pass
        self.inner.write(text)
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")


def _is_follow_on(record: dict) -> bool:
    text = f"{record.get('type', '')} {record.get('message', '')}".lower()
    return record.get("type") == "HorovodInternalError" or any(word in text for word in _FOLLOW_ON)


def root_cause(records: list[dict]) -> dict | None:
    """The record of the rank that failed first for its own reasons (else the first record)."""
    if not records:
        return None
    own = [r for r in records if not _is_follow_on(r)]
    return min(own or records, key=lambda r: r.get("time", 0.0))


def _quiet_cancelled_threads():
    """A threading.excepthook that drops the 'job cancelled' noise of horovod's Spark thread."""
    previous = threading.excepthook

    def hook(args) -> None:
        name = getattr(args.thread, "name", "") or ""
        if "run_spark" in name and "cancel" in str(args.exc_value).lower():
            return
        previous(args)

    return previous, hook


def run(
    fn: Callable[[Comm], T],
    *,
    num_proc: int,
    launcher: str = "horovod",
    timeout_s: int = DEFAULT_TIMEOUT_S,
    start_timeout_s: int = START_TIMEOUT_S,
    use_gpu: bool = False,
    env: dict[str, str] | None = None,
) -> T:
    """Run ``fn(comm)`` on ``num_proc`` ranks of the active Spark context; return rank 0's result.

    ``fn`` and everything it captures must be picklable. ``timeout_s`` bounds every collective
    (a rank silent that long stops the job); ``start_timeout_s`` bounds waiting for executors.
    ``env``: extra environment for the ranks. Raises :class:`RankFailed` with the failing rank's
    error, or :class:`TrainingError` when the launcher failed without a rank error record.
    """
    if launcher not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {launcher!r}; choose {' or '.join(LAUNCHERS)}")
    if num_proc < 1:
        raise ConfigError(f"--num-proc must be at least 1, got {num_proc}")
    from pyspark import SparkContext

    if SparkContext._active_spark_context is None:
        raise ConfigError("no active Spark context: start one with cnnspark.session.get_spark() first")
    main = _RankMain(fn, launcher, timeout_s)
    watch_out, watch_err = _ErrorWatch(sys.stdout), _ErrorWatch(sys.stderr)
    saved = sys.stdout, sys.stderr
    previous_hook, hook = _quiet_cancelled_threads()
    sys.stdout, sys.stderr = watch_out, watch_err
    threading.excepthook = hook
    started = time.monotonic()
    try:
        if launcher == "horovod":
            results = _run_horovod(main, num_proc, timeout_s, start_timeout_s, env or {}, watch_out, watch_err)
            return results[0]
        return _run_torch(main, num_proc, use_gpu, env or {})
    except CnnsparkError:
        raise
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        time.sleep(0.5)  # let the streamed rank output arrive
        cause = root_cause(watch_out.records + watch_err.records)
        if cause is not None:
            raise RankFailed(cause.get("rank", -1), cause.get("type", "Error"), cause.get("message", ""), cause.get("traceback", "")) from e
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TrainingError(
            f"{launcher} training on {num_proc} processes failed after {time.monotonic() - started:.0f} s without a rank "
            f"error record ({type(e).__name__}: {first_line[:500]}); the rank output above shows what happened"
        ) from e
    finally:
        sys.stdout, sys.stderr = saved
        threading.excepthook = previous_hook


def _run_horovod(main: _RankMain, num_proc: int, timeout_s: int, start_timeout_s: int, env: dict[str, str], out, err) -> list:
    try:
        import horovod.spark
    except ImportError as e:
        raise ConfigError(
            f"the horovod launcher needs Horovod with Spark support ({e}); install it (scripts/build_horovod.sh) "
            "or use --launcher torch"
        ) from e
    rank_env = dict(os.environ)
    rank_env.update(
        {
            # A rank that waits this long for the others in a collective makes Horovod stop the job.
            "HOROVOD_STALL_CHECK_TIME_SECONDS": str(min(60, timeout_s)),
            "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": str(timeout_s),
            "HOROVOD_GLOO_TIMEOUT_SECONDS": str(min(timeout_s, start_timeout_s)),
            "PYTHONUNBUFFERED": "1",
        }
    )
    rank_env.update(env)
    return horovod.spark.run(
        main, num_proc=num_proc, use_gloo=True, start_timeout=start_timeout_s, env=rank_env, stdout=out, stderr=err, verbose=0
    )


def _run_torch(main: _RankMain, num_proc: int, use_gpu: bool, env: dict[str, str]) -> Any:
    from pyspark.ml.torch.distributor import TorchDistributor

    fn = _with_env(main, env) if env else main
    distributor = TorchDistributor(num_processes=num_proc, local_mode=False, use_gpu=use_gpu)
    return distributor.run(fn)


class _with_env:
    """Set environment variables in the rank process, then call ``fn``."""

    def __init__(self, fn: Callable[[], Any], env: dict[str, str]) -> None:
        self.fn, self.env = fn, dict(env)

    def __call__(self) -> Any:
        os.environ.update(self.env)
        return self.fn()


def release_barrier_timer(spark) -> bool:
    """Stop Spark's barrier-task timer thread in this JVM; call only when the process is about to end.

    TorchDistributor runs a barrier stage. On a ``local`` master the executor is the driver JVM,
    and Spark 3.5's ``BarrierTaskContext`` leaves a non-daemon ``java.util.Timer`` thread there, so
    under ``spark-submit`` the JVM never exits after the Python program has finished. Cancelling
    the timer lets it exit; later barrier stages in the same JVM would fail, hence "about to end".
    Returns whether a timer was cancelled.
    """
    from cnnspark.train import local_slots

    sc = spark.sparkContext
    if local_slots(sc.master) is None:
        return False
    try:
        cls = sc._jvm.java.lang.Class.forName("org.apache.spark.BarrierTaskContext$")
        module = cls.getField("MODULE$").get(None)
        getattr(module, "org$apache$spark$BarrierTaskContext$$timer")().cancel()
    except Exception:  # noqa: BLE001 - another Spark version: nothing to release, or nothing we know of
        return False
    return True
