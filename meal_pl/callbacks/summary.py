"""RunSummary: the few lines a user reads when a run ends."""

from __future__ import annotations

import time

import lightning as L
from rich.console import Console
from rich.table import Table


class RunSummary(L.Callback):
    """Print steps, wall time, hypervolume (initial -> final), where the outputs are, and per prompt group
    (when the data names groups) the PWN's mean weights and the hypervolume."""

    def __init__(self) -> None:
        self.start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        report = next((getattr(cb, "final_report", None) for cb in trainer.callbacks if getattr(cb, "final_report", None)), None)
        table = Table(title="meal-pl run", show_header=False)
        table.add_row("steps", str(trainer.global_step))
        table.add_row("wall time", f"{time.perf_counter() - self.start:.1f} s")
        if report:
            table.add_row("hypervolume", f"{report['initial_hypervolume']:.4f} (initial) -> {report['hypervolume']:.4f} (final)")
            if report.get("hypervolume_ratio") is not None:
                table.add_row("hypervolume / analytic max", f"{report['hypervolume_ratio']:.3f}")
            if report.get("steerability"):  # rank correlation of w_k and reward k over the grid (1 = follows w)
                table.add_row("steerability", ", ".join(f"{n} {v:+.2f}" for n, v in report["steerability"].items()))
            choice = report.get("pwn_choice")
            if choice:
                table.add_row("PWN's own preference", ", ".join(f"{w:.2f}" for w in choice["weights"]))
        table.add_row("outputs", trainer.default_root_dir)
        console = Console()
        console.print(table)
        if report and report.get("groups"):
            console.print(group_table(report["groups"], report.get("objective_names") or []))


def group_table(groups: dict[str, dict], names: list[str]) -> Table:
    """One row per prompt group: prompts, the PWN's mean weight on each objective, the group's hypervolume."""
    table = Table(title="PWN's weights per prompt group")
    table.add_column("group")
    table.add_column("prompts", justify="right")
    for name in names:
        table.add_column(f"w {name}", justify="right")
    table.add_column("hypervolume", justify="right")
    for group, entry in groups.items():
        weights = entry.get("pwn_weights")
        cells = [f"{w:.2f}" for w in weights] if weights else ["—"] * len(names)
        hv = entry.get("hypervolume")
        table.add_row(group, str(entry.get("num_prompts", "")), *cells, "—" if hv is None else f"{hv:.4f}")
    return table
