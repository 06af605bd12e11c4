"""The node-local chunk cache: content-addressed files under one folder, shared by every process
on the machine (training ranks, Petastorm reader workers, Spark executors).

Layout: ``DIR/<first 2 hex digits of the id>/<32 hex digits of the id>``; the entry file holds
exactly the chunk's bytes. Safety rules:

- Writers write a private temporary file in the same folder and ``os.replace`` it into place, so
  a reader sees either no entry or a whole one; two processes filling the same id race harmlessly
  (the bytes are identical, the last rename wins).
- Every read re-hashes the bytes with XXH3-128 and compares with the id (a few GB/s). A torn,
  truncated or corrupted entry is deleted and reported as a miss, so the caller refetches from
  the lake: the cache never returns wrong bytes.
- ``put`` checks the hash too, so bytes that do not match their id are never stored.
- Size is bounded. Each process counts what it wrote; past a tenth of the bound (and at least
  every 64 MiB) it scans the folder and, when the total is over the bound, deletes least recently
  used entries (by mtime; a hit refreshes an entry's mtime at most once a minute) down to 90 % of
  it. A non-blocking ``flock`` on ``DIR/.evict.lock`` lets one process evict at a time; files
  that vanish under a scan (another process evicted them) are ignored.

Location: the ``directory`` argument, else ``$CNNSPARK_CACHE_DIR``, else
``~/.cache/cnnspark/chunks``. Bound: the ``max_bytes`` argument, else ``$CNNSPARK_CACHE_SIZE``
(e.g. ``50GiB``), else 10 GiB. ``$CNNSPARK_CACHE=off`` turns the cache off where it is on by default.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import xxhash

from cnnspark.errors import ConfigError
from cnnspark.sizes import GiB, MiB, parse_size

DEFAULT_MAX_BYTES = 10 * GiB
ENV_DIR = "CNNSPARK_CACHE_DIR"
ENV_SIZE = "CNNSPARK_CACHE_SIZE"
ENV_SWITCH = "CNNSPARK_CACHE"
LOW_WATER = 0.9
TOUCH_AFTER_S = 60.0
STALE_TMP_S = 3600.0
ID_BYTES = 16


def default_directory() -> Path:
    """``$CNNSPARK_CACHE_DIR`` or ``~/.cache/cnnspark/chunks``."""
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnnspark" / "chunks"


def default_max_bytes() -> int:
    """``$CNNSPARK_CACHE_SIZE`` parsed as a size, or 10 GiB."""
    env = os.environ.get(ENV_SIZE)
    return parse_size(env, what=f"${ENV_SIZE}") if env else DEFAULT_MAX_BYTES


def enabled_by_default() -> bool:
    """False when ``$CNNSPARK_CACHE`` is off/0/false/no."""
    return os.environ.get(ENV_SWITCH, "on").strip().lower() not in ("off", "0", "false", "no")


class ChunkCache:
    """A bounded, content-addressed, multi-process-safe cache of chunk bytes (see the module doc).

    Picklable (only the folder and the bound travel), so it can be handed to Petastorm workers
    and Spark tasks; each process keeps its own write counter.
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, max_bytes: int | str | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory else default_directory()
        size = default_max_bytes() if max_bytes is None else parse_size(max_bytes, what="cache size")
        if size <= 0:
            raise ConfigError(f"the chunk cache size must be positive, got {max_bytes!r}")
        self.max_bytes = size
        self._written = 0
        self._lock = threading.Lock()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"cannot create the chunk cache folder {self.directory}: {e}; set ${ENV_DIR} or pass cache_dir"
            ) from e

    def __repr__(self) -> str:
        return f"ChunkCache({str(self.directory)!r}, max_bytes={self.max_bytes})"

    def __getstate__(self) -> dict:
        return {"directory": str(self.directory), "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.directory = Path(state["directory"])
        self.max_bytes = state["max_bytes"]
        self._written = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ entries

    def path(self, chunk_id: bytes) -> Path:
        """Where the entry of ``chunk_id`` lives."""
        h = chunk_id.hex()
        return self.directory / h[:2] / h

    def get(self, chunk_id: bytes) -> bytes | None:
        """The chunk's bytes, or None on a miss. A corrupt entry is deleted and counts as a miss."""
        path = self.path(chunk_id)
        try:
            with open(path, "rb") as f:
                data = f.read()
                mtime = os.fstat(f.fileno()).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            return None
        if len(chunk_id) != ID_BYTES or xxhash.xxh3_128_digest(data) != chunk_id:
            self._discard(path)
            return None
        if time.time() - mtime > TOUCH_AFTER_S:
            try:
                os.utime(path)
            except OSError:
                pass
        return data

    def get_many(self, ids: Iterable[bytes]) -> dict[bytes, bytes]:
        """Hits among ``ids`` (misses are simply absent)."""
        out = {}
        for i in ids:
            data = self.get(i)
            if data is not None:
                out[i] = data
        return out

    def put(self, chunk_id: bytes, data: bytes | memoryview) -> bool:
        """Store a chunk; returns False (storing nothing) when ``data`` does not hash to ``chunk_id``."""
        if len(chunk_id) != ID_BYTES or xxhash.xxh3_128_digest(data) != chunk_id:
            return False
        path = self.path(chunk_id)
        if path.exists():
            return True
        tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            path.parent.mkdir(exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            self._discard(tmp)
            return False  # a full or read-only disk makes the cache a no-op, never an error
        with self._lock:
            self._written += len(data)
            due = self._written >= min(self.max_bytes // 10, 64 * MiB)
            if due:
                self._written = 0
        if due:
            self.evict()
        return True

    def put_many(self, chunks: dict[bytes, bytes]) -> int:
        """Store several chunks; returns how many were stored (or already present)."""
        return sum(self.put(i, d) for i, d in chunks.items())

    @staticmethod
    def _discard(path: Path) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass

    # ------------------------------------------------------------------ size bound

    def entries(self) -> list[tuple[float, int, str]]:
        """(mtime, size, path) of every entry now present; tolerant of concurrent deletes."""
        found = []
        now = time.time()
        try:
            subdirs = [e for e in os.scandir(self.directory) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        for sub in subdirs:
            try:
                listing = list(os.scandir(sub.path))
            except FileNotFoundError:
                continue
            for e in listing:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if e.name.startswith("."):
                    if now - st.st_mtime > STALE_TMP_S:  # left by a writer that died
                        self._discard(Path(e.path))
                    continue
                found.append((st.st_mtime, st.st_size, e.path))
        return found

    def size(self) -> int:
        """Bytes held now."""
        return sum(s for _, s, _ in self.entries())

    def evict(self) -> int:
        """Delete least recently used entries down to 90 % of the bound when over it; bytes freed.

        Returns 0 without scanning when another process holds the eviction lock.
        """
        import fcntl

        lock_path = self.directory / ".evict.lock"
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError:
            return 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0
            entries = self.entries()
            total = sum(s for _, s, _ in entries)
            if total <= self.max_bytes:
                return 0
            target = int(self.max_bytes * LOW_WATER)
            freed = 0
            for _, size, path in sorted(entries):
                if total - freed <= target:
                    break
                try:
                    os.unlink(path)
                    freed += size
                except FileNotFoundError:
                    freed += size  # someone else removed it: it no longer counts either way
                except OSError:
                    continue
            return freed
        finally:
            os.close(fd)

    def clear(self) -> None:
        """Delete every entry (the folder stays)."""
        for _, _, path in self.entries():
            self._discard(Path(path))


def resolve(cache: bool | ChunkCache | None, *, directory: str | os.PathLike | None = None, max_bytes: int | str | None = None) -> ChunkCache | None:
    """Turn the usual ``cache=`` arguments into a ChunkCache or None.

    ``cache=True`` (or None: on unless ``$CNNSPARK_CACHE=off``) builds one from ``directory`` and
    ``max_bytes`` (or their environment defaults); False turns it off; a ChunkCache is used as is.
    """
    if isinstance(cache, ChunkCache):
        return cache
    if cache is False or (cache is None and not enabled_by_default()):
        return None
    return ChunkCache(directory, max_bytes=max_bytes)
