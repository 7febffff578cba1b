"""The per-step metrics TensorBoard shows (README "Reading TensorBoard"), computed from one rollout and its update."""

from __future__ import annotations

import torch
from torch import Tensor

from meal_pl import losses
from meal_pl.rollout import Rollout


def step_metrics(r: Rollout, names: list[str], loss: Tensor, kl: Tensor, lr: float) -> tuple[dict[str, Tensor], dict[str, int]]:
    """(metrics by tag, this step's counts to add to the run's counters)."""
    B, N, K = r.shape
    flat_valid = r.valid.flatten()
    metrics = {f"reward/{n}": r.raw[flat_valid, k].mean() for k, n in enumerate(names)}
    metrics["reward/scalarized"] = (losses.scalarize(r.weights, r.rewards) * r.selection).sum(-1).mean()
    for k, n in enumerate(names):
        metrics[f"pwn/weight_{n}"] = r.weights[:, k].mean()
    metrics["train/policy_loss"] = loss.detach()
    metrics["train/lr"] = torch.tensor(lr)
    metrics["train/kl"] = (kl.detach() * r.selection.flatten()).sum() / B
    metrics["train/rejection_rate"] = 1 - r.keep.sum() / flat_valid.sum().clamp(min=1)
    metrics["train/exploration_rate"] = r.explore.float().mean()
    lengths = r.resp_mask.sum(-1)
    metrics["perf/tokens_per_s"] = torch.tensor(float(lengths.sum()) / max(r.gen_time, 1e-9))
    metrics["train/response_length"] = lengths.float().mean()
    counts = dict(r.counts)
    counts["empty_responses"] = int((lengths <= 1).sum())  # EOS at step 0 or nothing
    groups = r.responses.view(B, N, -1)
    counts["identical_groups"] = int(sum(len({tuple(y.tolist()) for y in g}) == 1 for g in groups)) if N > 1 else 0
    return metrics, counts
