"""Range checks for numeric settings: one line naming the key and what it must be, before any minute is spent.

A negative KL weight or clipping norm would otherwise run (the norm's sign flips every gradient), a zero batch size
would fail deep in a loop with `range() arg 3 must not be zero`, and NaN would fail at the first sample.
"""

from __future__ import annotations

import math
from typing import Any


def check_integer(key: str, value: Any, least: int, note: str = "", most: int | None = None) -> None:
    """`value` must be an integer >= `least` (and <= `most` when given); `note` (e.g. " (0: off)") follows the message."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least or (most is not None and value > most):
        bound = f">= {least}" if most is None else f"from {least} to {most}"
        raise ValueError(f"{key}={value} must be an integer {bound}{note}")


def check_number(key: str, value: Any, least: float = 0.0, strict: bool = False, note: str = "") -> None:
    """`value` must be a finite number >= `least` (> `least` when `strict`); `note` follows the message."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not is_number or (value <= least if strict else value < least):
        raise ValueError(f"{key}={value} must be a finite number {'>' if strict else '>='} {least:g}{note}")
