"""A rich progress bar over the run's policy steps rather than over loader epochs."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from rich.console import Console


class StepProgressBar(RichProgressBar):
    """One bar from step 0 to trainer.max_steps; a Meal run is measured in steps, its epochs are incidental.

    Off when stdout is not a terminal: piped, rich draws the bar once at the very end, after the summary;
    train.log has the progress lines (meal_pl.logs.LogProgress) instead.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not Console().is_terminal:
            self.disable()

    @property
    def total_train_batches(self) -> int | float:
        max_steps = self.trainer.max_steps
        return max_steps if max_steps and max_steps > 0 else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        return "Meal steps"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()
