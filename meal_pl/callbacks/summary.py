"""RunSummary: the few lines a user reads when a run ends (console and train.log)."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L

from meal_pl.logs import emit


def has_pwn(pl_module: L.LightningModule) -> bool:
    """True when preferences come from a learned preference-weight-net (meal), not a static source (ric, linear)."""
    return bool(getattr(getattr(pl_module, "pwn", None), "learnable", False))


# Below this share of distinct tokens per response a policy repeats itself (measured, README "The default run": text
# 0.70-0.91, the degenerate blanks and repeated letters that reward-hacked the helpful/harmless proxies 0.05-0.22).
REPETITIVE = 0.4


def summary_lines(steps: int, wall_s: float, report: dict | None, outputs: str, pwn: bool,
                  distinct_tokens: float | None = None) -> list[str]:
    """`label  value` lines; plain text (not a table), so a piped stdout keeps every path whole."""
    rows = [("steps", str(steps)), ("wall time", f"{wall_s:.1f} s")]
    if distinct_tokens is not None:
        warning = " - the policy repeats itself: read generations.json" if distinct_tokens < REPETITIVE else ""
        rows.append(("distinct tokens", f"{distinct_tokens:.2f} of a response's tokens (last step){warning}"))
    if report:
        rows.append(("hypervolume", f"{report['initial_hypervolume']:.4f} (initial) -> {report['hypervolume']:.4f} (final)"))
        if report.get("hypervolume_ratio") is not None:
            rows.append(("hypervolume / analytic max", f"{report['hypervolume_ratio']:.3f}"))
        if report.get("steerability"):
            draws = report.get("draws", 1)
            rows.append(("steerability", steerability_text(report) + (f"; {draws} answers per prompt and preference"
                                                                       if draws > 1 else "")))
        choice = report.get("pwn_choice")
        if pwn and choice:
            names = report.get("objective_names") or [str(i) for i in range(len(choice["weights"]))]
            rows.append(("PWN's own preference", ", ".join(f"{n}={w:.2f}" for n, w in zip(names, choice["weights"], strict=True))))
            gain = choice.get("hypervolume_gain")
            added = "" if gain is None else f" (hypervolume it adds to the static grid's front: {gain:.4f})"
            rows.append(("its mean rewards", ", ".join(f"{n}={r:.3f}" for n, r in zip(names, choice["rewards"], strict=True)) + added))
    width = max(len(label) for label, _ in rows + [("outputs", "")])
    lines = ["meal-pl run finished"] + [f"  {label:<{width}}  {value}" for label, value in rows]
    if report and report.get("groups"):
        lines += group_lines(report["groups"], report.get("objective_names") or [], pwn)
    return lines + [f"  {'outputs':<{width}}  {Path(outputs).resolve()}"]  # last: a piped reader finds it there


def steerability_text(report: dict) -> str:
    """'a=0.50 [-0.10, +0.90], b=...' : each objective's steerability, with its interval where the report has one."""
    interval = report.get("steerability_interval") or {}
    shown = [f"{k}={v:.2f}" + (f" [{interval[k][0]:+.2f}, {interval[k][1]:+.2f}]" if k in interval else "")
             for k, v in report["steerability"].items()]
    return ", ".join(shown) + (" (90% interval over the evaluation's prompts)" if interval else "")


def group_lines(groups: dict[str, dict], names: list[str], pwn: bool) -> list[str]:
    """Per prompt group: its prompts, the PWN's mean weights (meal only), the group's hypervolume and (meal only)
    the mean rewards under the PWN's own preferences with the hypervolume they add to the group's static front."""
    heading = " (the PWN's mean weights, the group's hypervolume, rewards at the PWN's choice)" if pwn else " (hypervolume)"
    lines = ["  per prompt group" + heading]
    width = max(len(g) for g in groups)
    for group, entry in groups.items():
        weights = entry.get("pwn_weights")
        shown = ", ".join(f"{n}={w:.2f}" for n, w in zip(names, weights, strict=True)) if pwn and weights else ""
        hv = entry.get("hypervolume")
        cells = [f"{entry.get('num_prompts', '')} prompts", shown, "HV " + ("—" if hv is None else f"{hv:.4f}")]
        choice = entry.get("pwn_choice") if pwn else None
        if choice:
            gain = choice.get("hypervolume_gain")
            cells.append("at its choice " + ", ".join(f"{n}={r:.3f}" for n, r in zip(names, choice["rewards"], strict=True))
                         + ("" if gain is None else f" (+HV {gain:.4f})"))
        lines.append(f"    {group:<{width}}  " + "  ".join(c for c in cells if c))
    return lines


class RunSummary(L.Callback):
    """Print steps, wall time, hypervolume (initial -> final), steerability, the PWN's choice (if any), where the
    outputs are, and per prompt group (when the data names groups) the PWN's mean weights and the hypervolume."""

    def __init__(self) -> None:
        self.start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        report = next((getattr(cb, "final_report", None) for cb in trainer.callbacks if getattr(cb, "final_report", None)), None)
        distinct = trainer.callback_metrics.get("train/distinct_tokens")
        emit(summary_lines(trainer.global_step, time.perf_counter() - self.start, report, trainer.default_root_dir,
                           has_pwn(pl_module), None if distinct is None else float(distinct)))
