"""Where a training step's CPU time goes: named sections, timed only while a profile is switched on.

    with profiling.section("generate"):
        responses = module.generate(...)

Off (the default), `section` hands back one shared no-op context manager: a global read and a call. On
(`enable()`, as benchmarks/step_profile.py does), each section adds this process's CPU seconds
(`time.process_time`, barely moved by other processes on shared cores) and its wall seconds to its name's
totals until `take()` returns and clears them. With `count_flops(True)` each section also counts the floating-point
operations of its matrix products (torch's FlopCounterMode: slower, so counted steps are not timed ones). Sections
are meant not to overlap; nothing checks that they do not.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

_enabled = False
_flops_on = False
_totals: defaultdict[str, float] = defaultdict(float)  # CPU seconds
_wall: defaultdict[str, float] = defaultdict(float)
_flops: defaultdict[str, float] = defaultdict(float)
_OFF = contextlib.nullcontext()


def enable(on: bool = True) -> None:
    """Switch timing on (or off with on=False); the totals are cleared either way."""
    global _enabled
    _enabled = on
    count_flops(False)
    take()


def enabled() -> bool:
    return _enabled


def section(name: str) -> contextlib.AbstractContextManager:
    """Time the block under `name` while profiling is on; a shared no-op otherwise."""
    return _timed(name) if _enabled else _OFF


def count_flops(on: bool = True) -> None:
    """Count each section's matrix-product FLOPs (while profiling is on) until switched off."""
    global _flops_on
    _flops_on = on


@contextlib.contextmanager
def _timed(name: str) -> Iterator[None]:
    counter = _flop_counter() if _flops_on else _OFF
    start, wall = time.process_time(), time.perf_counter()
    try:
        with counter:
            yield
    finally:
        _totals[name] += time.process_time() - start
        _wall[name] += time.perf_counter() - wall
        if counter is not _OFF:
            _flops[name] += counter.get_total_flops()


def _flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False)


def take() -> dict[str, float]:
    """CPU seconds per section since the last take (or enable), and clear them (wall seconds and FLOPs too)."""
    return take_all()["cpu"]


def take_all() -> dict[str, dict[str, float]]:
    """{"cpu": seconds, "wall": seconds, "flops": counted FLOPs} per section since the last take, and clear them."""
    out = {"cpu": dict(_totals), "wall": dict(_wall), "flops": dict(_flops)}
    for totals in (_totals, _wall, _flops):
        totals.clear()
    return out
