"""Content-defined chunking (FastCDC 2020, normalized chunking level 1) and XXH3-128 hashing.

Chunk ids are the XXH3-128 digest of a chunk's bytes (16 bytes); a file's content hash is the
XXH3-128 digest of the whole file. XXH3 is fast and collision-resistant for accidental
collisions, but it is not a cryptographic hash: `cnnspark verify` rebuilds and re-hashes.

The algorithm name and its parameters are recorded in every manifest (``chunker`` column), so
stored cut points stay explainable when defaults change.
"""

from __future__ import annotations

from dataclasses import dataclass

import xxhash
from pyfastcdc import FastCDC

from cnnspark.errors import ConfigError
from cnnspark.sizes import KiB, MiB, parse_size

ALGORITHM = "fastcdc2020-nc1"
ID_BYTES = 16

# Bounds pyfastcdc accepts.
MIN_SIZE_RANGE = (64, 1 * MiB)
AVG_SIZE_RANGE = (256, 4 * MiB)
MAX_SIZE_RANGE = (1 * KiB, 16 * MiB)


@dataclass(frozen=True)
class ChunkingParams:
    """FastCDC size bounds in bytes. Defaults 16/64/256 KiB."""

    min_size: int = 16 * KiB
    avg_size: int = 64 * KiB
    max_size: int = 256 * KiB

    def __post_init__(self) -> None:
        for name, value, (lo, hi) in (
            ("--min-chunk", self.min_size, MIN_SIZE_RANGE),
            ("--avg-chunk", self.avg_size, AVG_SIZE_RANGE),
            ("--max-chunk", self.max_size, MAX_SIZE_RANGE),
        ):
            if not lo <= value <= hi:
                raise ConfigError(f"{name} must be between {lo} and {hi} bytes, got {value}")
        if not self.min_size <= self.avg_size <= self.max_size:
            raise ConfigError(
                "chunk sizes must satisfy --min-chunk <= --avg-chunk <= --max-chunk, got "
                f"{self.min_size} / {self.avg_size} / {self.max_size}"
            )

    @classmethod
    def parse(cls, min_size: str | int, avg_size: str | int, max_size: str | int) -> ChunkingParams:
        return cls(
            parse_size(min_size, what="--min-chunk"),
            parse_size(avg_size, what="--avg-chunk"),
            parse_size(max_size, what="--max-chunk"),
        )

    @property
    def label(self) -> str:
        """What the ``chunker`` column records, e.g. ``fastcdc2020-nc1/16384/65536/262144``."""
        return f"{ALGORITHM}/{self.min_size}/{self.avg_size}/{self.max_size}"

    def chunker(self) -> FastCDC:
        return FastCDC(
            avg_size=self.avg_size,
            min_size=self.min_size,
            max_size=self.max_size,
            normalized_chunking=1,
        )


def chunk_id(data: bytes | memoryview) -> bytes:
    """The id of a chunk: XXH3-128 digest of its bytes."""
    return xxhash.xxh3_128_digest(data)


def content_hash(data: bytes | memoryview) -> bytes:
    """The content hash of a whole file: XXH3-128 digest of its bytes."""
    return xxhash.xxh3_128_digest(data)


def chunk_key(chunk_id_: bytes) -> int:
    """The int64 kept beside each id (first 8 bytes, big-endian, signed) for min/max statistics."""
    return int.from_bytes(chunk_id_[:8], "big", signed=True)


def cut_points(data: bytes | memoryview, cdc: FastCDC) -> list[tuple[int, int]]:
    """(offset, length) of each chunk; together they cover ``data`` exactly, in order."""
    if len(data) == 0:
        return []
    return [(c.offset, c.length) for c in cdc.cut_buf(data)]


def split(data: bytes | memoryview, cdc: FastCDC) -> list[tuple[bytes, memoryview]]:
    """(chunk id, chunk bytes) of each chunk of ``data``, in file order."""
    view = memoryview(data)
    out = []
    for offset, length in cut_points(view, cdc):
        piece = view[offset : offset + length]
        out.append((chunk_id(piece), piece))
    return out
