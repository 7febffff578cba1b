"""What benchmarks/step_profile.py and benchmarks/scaling.py share: the bench's quick run configs, CPU-timed steps."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the bench's quick setting (bench.quick_settings.threads)

import lightning as L  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from meal_pl import profiling  # noqa: E402
from meal_pl.bench.__main__ import run_config  # noqa: E402
from meal_pl.bench.plan import METHODS  # noqa: E402
from meal_pl.runs import CONF_DIR  # noqa: E402

# Outside the steps and not what these scripts measure: the end-of-run evaluations.
NO_EVAL = ["~callbacks.pareto_eval", "~callbacks.generations"]


def quick_config(method: str, extra: list[str], output_dir: Path) -> DictConfig:
    """`method`'s train config exactly as `python -m meal_pl.bench bench.quick=true` composes it, plus `extra`."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        bench = compose(config_name="bench", overrides=["bench.quick=true"]).bench
        overrides = list(bench.run_overrides) + list(bench.quick_settings.overrides) + METHODS[method].overrides + extra
        return run_config(overrides, output_dir)


class StepClock(L.Callback):
    """CPU seconds of each step, start to next start (so Lightning's own work after a batch is counted),
    with the `meal_pl.profiling` sections taken inside it. Put it first in the callback list."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self._start: float | None = None
        self._parts: dict[str, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        now = time.process_time()
        if self._start is not None:
            self.steps.append({"total": now - self._start, **self._parts})
        self._start = now
        profiling.take()  # nothing between steps belongs to this one

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._parts = profiling.take()
