"""Where a training step's CPU time goes: named sections, timed only while a profile is switched on.

    with profiling.section("generate"):
        responses = module.generate(...)

Off (the default), `section` hands back one shared no-op context manager: a global read and a call. On
(`enable()`, as benchmarks/step_profile.py does), each section adds this process's CPU seconds
(`time.process_time`, barely moved by other processes on shared cores) to its name's total until
`take()` returns and clears them. Sections are meant not to overlap; nothing checks that they do not.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

_enabled = False
_totals: defaultdict[str, float] = defaultdict(float)
_OFF = contextlib.nullcontext()


def enable(on: bool = True) -> None:
    """Switch timing on (or off with on=False); the totals are cleared either way."""
    global _enabled
    _enabled = on
    _totals.clear()


def enabled() -> bool:
    return _enabled


def section(name: str) -> contextlib.AbstractContextManager:
    """Time the block under `name` while profiling is on; a shared no-op otherwise."""
    return _timed(name) if _enabled else _OFF


@contextlib.contextmanager
def _timed(name: str) -> Iterator[None]:
    start = time.process_time()
    try:
        yield
    finally:
        _totals[name] += time.process_time() - start


def take() -> dict[str, float]:
    """CPU seconds per section since the last take (or enable), and clear them."""
    out = dict(_totals)
    _totals.clear()
    return out
