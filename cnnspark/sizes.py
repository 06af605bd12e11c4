"""Byte sizes: named constants and parsing of human strings such as ``64KiB`` or ``1.5GB``."""

from __future__ import annotations

import re

from cnnspark.errors import ConfigError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": KiB,
    "m": 1000**2, "mb": 1000**2, "mib": MiB,
    "g": 1000**3, "gb": 1000**3, "gib": GiB,
    "t": 1000**4, "tb": 1000**4, "tib": 1024 * GiB,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str | int, *, what: str = "size") -> int:
    """Parse ``"64KiB"``, ``"256k"``, ``"1.5GB"`` or a plain integer into bytes."""
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{what} must not be negative, got {value}")
        return value
    m = _SIZE.match(value)
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ConfigError(
            f"{what}: cannot read {value!r} as a size; use bytes or a unit, e.g. 65536, 64KiB, 1.5GB"
        )
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: float) -> str:
    """``1536 -> '1.5 KiB'``; binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
