"""What benchmarks/step_profile.py and benchmarks/scaling.py share: the bench's quick run configs, CPU-timed steps."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the bench's quick setting (bench.quick_settings.threads)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline as meal-pl's commands are (importing meal_pl sets nothing)

import lightning as L  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from meal_pl import profiling  # noqa: E402
from meal_pl.bench.__main__ import run_config  # noqa: E402
from meal_pl.bench.plan import METHODS  # noqa: E402
from meal_pl.runs import CONF_DIR  # noqa: E402

# Outside the steps and not what these scripts measure: the end-of-run evaluations.
NO_EVAL = ["~callbacks.pareto_eval", "~callbacks.generations"]
# The SmolLM2 benchmarks time and compare its online steps, as their tables were measured: the preference as tags and
# no warm start (the experiment's DPO warm start would add ~15 minutes and its text conditioning longer prompts).
SMOLLM2_STEPS = ["experiment=smollm2_lora", "conditioning=tags", "warm_start.steps=0"]


def quick_config(method: str, extra: list[str], output_dir: Path) -> DictConfig:
    """`method`'s train config exactly as `python -m meal_pl.bench bench.quick=true` composes it, plus `extra`."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        bench = compose(config_name="bench", overrides=["bench.quick=true"]).bench
        overrides = list(bench.run_overrides) + list(bench.quick_settings.overrides) + METHODS[method].overrides + extra
        return run_config(overrides, output_dir)


class StepClock(L.Callback):
    """CPU and wall seconds of each step, start to next start (so Lightning's own work after a batch is counted),
    with the `meal_pl.profiling` sections taken inside it. Put it first in the callback list.

    Each step: {"total": CPU s, "wall": wall s, <section>: CPU s, "wall:<section>": wall s, "flops:<section>": FLOPs}.
    From step `count_from` on, the sections' FLOPs are counted too (torch's counter slows those steps).
    """

    def __init__(self, count_from: int | None = None) -> None:
        self.steps: list[dict[str, float]] = []
        self._start: float | None = None
        self._wall: float | None = None
        self._parts: dict[str, float] = {}
        self.count_from = count_from

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        now, wall = time.process_time(), time.perf_counter()
        if self._start is not None:
            self.steps.append({"total": now - self._start, "wall": wall - self._wall, **self._parts})
        self._start, self._wall = now, wall
        profiling.count_flops(self.count_from is not None and len(self.steps) >= self.count_from)
        profiling.take()  # nothing between steps belongs to this one

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        taken = profiling.take_all()
        self._parts = {**taken["cpu"], **{f"wall:{k}": v for k, v in taken["wall"].items()},
                       **{f"flops:{k}": v for k, v in taken["flops"].items()}}


def write_report(out: Path, name: str, title: str, lines: list[str], data) -> None:
    """Print a benchmark's table, write <name>.json (the data) and <name>.md (the title and the table) to `out`."""
    print("\n".join(lines))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=1))
    (out / f"{name}.md").write_text(f"# {title}\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {out / f'{name}.json'}, {name}.md")
