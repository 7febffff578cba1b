"""The run's log: what goes to the console and to <run dir>/train.log, and what is kept out of both.

Hydra configures the handlers (conf/hydra/default.yaml: `job_logging`): the console shows bare messages,
train.log the same with time stamps, plus the progress lines of `LogProgress` and a failed run's error
line (file only: the console has its progress bar, and the error goes to stderr). `route_library_logs` sends Lightning's messages and Python warnings through those
handlers (Lightning keeps its own console handler otherwise, so train.log stayed empty) and drops
Lightning's advertisements ("💡 Tip: ... litlogger / litmodels").
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from omegaconf import DictConfig

log = logging.getLogger("meal_pl")
# Records under meal_pl.file reach train.log only (conf/hydra/default.yaml gives it the file handler alone).
progress_log = logging.getLogger("meal_pl.file.progress")
error_log = logging.getLogger("meal_pl.file.error")

ADVERT_PREFIX = "💡 Tip"
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


class DropAdverts(logging.Filter):
    """Drop Lightning's product tips; everything else passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERT_PREFIX)


def route_library_logs() -> None:
    """Lightning's records and warnings go through the root handlers (console + train.log), without adverts.

    Only when the root logger has handlers (Hydra's job logging); a bare `train(cfg)` keeps Lightning's own.
    """
    advert_filter = DropAdverts()
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropAdverts) for f in logger.filters):
            logger.addFilter(advert_filter)
    if not logging.getLogger().handlers:
        return
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):  # the StreamHandler Lightning adds at import
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    logging.captureWarnings(True)


def emit(lines: list[str]) -> None:
    """Lines to the console and train.log through logging; printed when no handler is configured (a bare train())."""
    if logging.getLogger().handlers or log.handlers:
        for line in lines:
            log.info(line)
    else:
        print("\n".join(lines), flush=True)


def config_summary(cfg: DictConfig, choices: dict[str, Any], ckpt_path: str | None) -> list[str]:
    """The few settings that identify a run, for the top of the log."""
    sampler = cfg.algorithm.get("sampler") or {}
    stage = cfg.get("warm_start") or {}
    # an objective's own length wins (objective.warm_start_steps, as meal_pl.warm_start.WarmStart reads it)
    own_steps = (cfg.get("objective") or {}).get("warm_start_steps")
    warm_start_steps = int(own_steps if own_steps is not None else stage.get("steps") or 0)
    lines = [
        f"run directory: {cfg.paths.output_dir}",
        "config: " + ", ".join(f"{k}={choices[k]}" for k in ("objective", "model", "algorithm", "pwn", "hardware") if k in choices),
        f"seed={cfg.seed}, trainer.max_steps={cfg.trainer.max_steps}, data.batch_size={cfg.data.get('batch_size')}, "
        f"samples per prompt={sampler.get('num_samples')}, max_new_tokens={sampler.get('max_new_tokens')}, "
        f"warm_start_steps={warm_start_steps}",
    ]
    if ckpt_path:
        lines.append(f"resuming from {ckpt_path}")
    return lines


class LogProgress(L.Callback):
    """A progress line in train.log about every tenth of the run (the console's progress bar leaves no trace)."""

    def __init__(self, every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"callbacks.progress_log.every_n_steps={every_n_steps} must be >= 1 (or null: a tenth of the run)")
        self.every_n_steps = every_n_steps
        self.start = time.perf_counter()
        self.last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step, total = trainer.global_step, trainer.max_steps
        every = self.every_n_steps or max(1, total // 10 if total and total > 0 else 10)
        if not trainer.is_global_zero or step == self.last_step or (step % every and step != total):
            return
        self.last_step = step
        metrics = trainer.callback_metrics
        shown = [f"{k} {float(metrics[k]):.4g}" for k in ("train/policy_loss", "reward/scalarized", "pareto/hypervolume") if k in metrics]
        shown += [f"{k} {float(v):.4g}" for k, v in metrics.items() if k.startswith("reward/") and k != "reward/scalarized"]
        progress_log.info(f"step {step}/{total} | {time.perf_counter() - self.start:.1f} s | " + " | ".join(shown))
