"""FastCDC + XXH3 chunking: content-defined boundaries, full coverage, parameter checks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
import xxhash

from cnnspark.chunking import ChunkingParams, chunk_key, cut_points, split
from cnnspark.errors import ConfigError
from cnnspark.sizes import KiB, parse_size
from imagegen import textured


@pytest.fixture(scope="module")
def tiff_bytes() -> bytes:
    """A real ~3 MB uncompressed TIFF, as inspection cameras write them."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, textured(np.random.default_rng(7), 1024, 1024, channels=3))
    return buf.getvalue()


def test_chunks_cover_every_byte_and_join_back(tiff_bytes):
    params = ChunkingParams()
    cuts = cut_points(tiff_bytes, params.chunker())
    assert cuts[0][0] == 0
    assert sum(length for _, length in cuts) == len(tiff_bytes)
    for (o1, l1), (o2, _) in zip(cuts, cuts[1:]):
        assert o1 + l1 == o2
    assert all(length <= params.max_size for _, length in cuts)
    assert all(length >= params.min_size for _, length in cuts[:-1])
    pieces = split(tiff_bytes, params.chunker())
    assert b"".join(bytes(p) for _, p in pieces) == tiff_bytes
    assert all(cid == xxhash.xxh3_128_digest(bytes(p)) and len(cid) == 16 for cid, p in pieces)


def test_inserting_bytes_near_the_start_changes_only_the_first_chunks(tiff_bytes):
    cdc = ChunkingParams().chunker()
    before = [cid for cid, _ in split(tiff_bytes, cdc)]
    edited = tiff_bytes[:1000] + b"inserted by an editor" * 10 + tiff_bytes[1000:]
    after = [cid for cid, _ in split(edited, cdc)]
    assert len(before) > 20
    changed = [i for i, cid in enumerate(after) if cid not in set(before)]
    assert changed and max(changed) <= 2, f"chunks changed at positions {changed}"
    # Every chunk after the edit region is shared.
    assert after[3:] == before[len(before) - len(after) + 3 :]


def test_fixed_size_chunks_would_not_survive_the_same_insert(tiff_bytes):
    """The reason for CDC: with fixed 64 KiB blocks the same insert changes every block."""
    edited = tiff_bytes[:1000] + b"x" * 7 + tiff_bytes[1000:]
    blocks = lambda b: {xxhash.xxh3_128_digest(b[i : i + 65536]) for i in range(0, len(b), 65536)}  # noqa: E731
    assert len(blocks(tiff_bytes) & blocks(edited)) <= 1


def test_chunk_key_is_signed_big_endian_prefix():
    assert chunk_key(bytes([0x80] + [0] * 15)) == -(2**63)
    assert chunk_key(bytes([0, 0, 0, 0, 0, 0, 0, 1] + [0xFF] * 8)) == 1


@pytest.mark.parametrize(
    "sizes, message",
    [
        (("64KiB", "16KiB", "256KiB"), "min-chunk <= --avg-chunk"),
        (("16KiB", "64KiB", "32MiB"), "--max-chunk must be between"),
        (("16KiB", "sixty", "256KiB"), "cannot read 'sixty'"),
    ],
)
def test_bad_chunk_sizes_say_what_is_wrong(sizes, message):
    with pytest.raises(ConfigError, match=message):
        ChunkingParams.parse(*sizes)


def test_sizes_parse_units():
    assert parse_size("64KiB") == 64 * KiB
    assert parse_size("1.5k") == 1500
    assert parse_size("2 MB") == 2_000_000
    assert ChunkingParams.parse("16KiB", "64KiB", "256KiB") == ChunkingParams()
