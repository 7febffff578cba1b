"""The warm start's optimisation loop, shared by its losses (SFT in meal_pl/sft.py, DPO in meal_pl/dpo_warm_start.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def batch_order(num_batches: int, seed: int = 0) -> Tensor:
    """The seeded random order `offline_steps` takes its batches in (cycled past the last)."""
    return torch.randperm(num_batches, generator=torch.Generator().manual_seed(seed))


def visited_batches(num_batches: int, steps: int, seed: int = 0) -> list[int]:
    """The batches `steps` steps of `offline_steps` use, in index order: what a loss needs precomputed."""
    order = batch_order(num_batches, seed)
    return sorted({int(order[step % num_batches]) for step in range(steps)})


def offline_steps(policy: torch.nn.Module, num_batches: int, steps: int, lr: float, batch_loss: Callable[[int], Tensor],
                  seed: int = 0) -> list[float]:
    """`steps` AdamW steps (gradients clipped to norm 1), each on `batch_loss(i)` for batch i of `num_batches` taken in a
    seeded random order (cycled); the loss history."""
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    order = batch_order(num_batches, seed)
    history = []
    policy.train()
    for step in range(steps):
        loss = batch_loss(int(order[step % num_batches]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        history.append(loss.item())
    return history
