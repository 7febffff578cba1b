"""RunSummary: the few lines a user reads when a run ends (console and train.log)."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L

from meal_pl.logs import emit


def has_pwn(pl_module: L.LightningModule) -> bool:
    """True when preferences come from a learned preference-weight-net (meal), not a static source (ric, linear)."""
    return bool(getattr(getattr(pl_module, "pwn", None), "learnable", False))


def summary_lines(steps: int, wall_s: float, report: dict | None, outputs: str, pwn: bool) -> list[str]:
    """`label  value` lines; plain text (not a table), so a piped stdout keeps every path whole."""
    rows = [("steps", str(steps)), ("wall time", f"{wall_s:.1f} s")]
    if report:
        rows.append(("hypervolume", f"{report['initial_hypervolume']:.4f} (initial) -> {report['hypervolume']:.4f} (final)"))
        if report.get("hypervolume_ratio") is not None:
            rows.append(("hypervolume / analytic max", f"{report['hypervolume_ratio']:.3f}"))
        steer = report.get("steerability") or {}
        if steer:
            rows.append(("steerability", ", ".join(f"{k}={v:.2f}" for k, v in steer.items())))
        choice = report.get("pwn_choice")
        if pwn and choice:
            names = report.get("objective_names") or [str(i) for i in range(len(choice["weights"]))]
            rows.append(("PWN's own preference", ", ".join(f"{n}={w:.2f}" for n, w in zip(names, choice["weights"], strict=True))))
            rows.append(("its mean rewards", ", ".join(f"{n}={r:.3f}" for n, r in zip(names, choice["rewards"], strict=True))))
    rows.append(("outputs", str(Path(outputs).resolve())))
    width = max(len(label) for label, _ in rows)
    return ["meal-pl run finished"] + [f"  {label:<{width}}  {value}" for label, value in rows]


class RunSummary(L.Callback):
    """Print steps, wall time, hypervolume (initial -> final), the PWN's choice (if any) and where the outputs are."""

    def __init__(self) -> None:
        self.start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        report = next((getattr(cb, "final_report", None) for cb in trainer.callbacks if getattr(cb, "final_report", None)), None)
        emit(summary_lines(trainer.global_step, time.perf_counter() - self.start, report, trainer.default_root_dir, has_pwn(pl_module)))
