"""Reward backends: each reward is a callable (prompts, completions) -> list[float], TRL style."""

import builtins
import math
from collections.abc import Callable, Mapping

import torch

from meal_pl.precision import full_precision
from meal_pl.rewards.normalizer import RunningRewardNorm

RewardFn = Callable[[list[str], list[str]], list[float]]

__all__ = ["RewardFn", "RewardSet", "RunningRewardNorm"]


def _as_float(value) -> float:
    # None / non-finite become NaN so the caller can drop and count them instead of crashing.
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


class RewardSet:
    """K named rewards scored together into one (n, K) tensor; names fix the objective order."""

    def __init__(self, rewards: Mapping[str, RewardFn]) -> None:
        if len(rewards) == 0:
            raise ValueError("RewardSet needs at least one reward")
        self.rewards = dict(rewards)  # also accepts the DictConfig that hydra's instantiate returns
        for name, fn in self.rewards.items():
            # builtins.: importing the submodule meal_pl.rewards.callable rebinds `callable` in this namespace.
            if not builtins.callable(fn):
                raise TypeError(f"reward {name!r} is not callable: {type(fn).__name__}")
        self.names = list(self.rewards)

    def __len__(self) -> int:
        return len(self.names)

    def place(self, device) -> None:
        """Rewards whose models follow the policy (device: auto) move to its device; the others stay."""
        for fn in self.rewards.values():
            if hasattr(fn, "place"):
                fn.place(device)

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """Raw rewards, (n, K) float32 in the order of `names`; NaN where a reward gave no finite value."""
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts but {n} completions")
        columns = []
        with full_precision():  # a bf16 step's autocast would change the reward models' scores
            outputs = {name: list(fn(list(prompts), list(completions))) for name, fn in self.rewards.items()}
        for name, values in outputs.items():
            if len(values) != n:
                raise ValueError(f"reward {name!r} returned {len(values)} values for {n} completions")
            columns.append([_as_float(v) for v in values])
        return torch.tensor(columns, dtype=torch.float32).T.reshape(n, len(self.names))
