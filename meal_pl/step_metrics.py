"""The per-step metrics TensorBoard shows (README "Reading TensorBoard"), computed from one rollout and its update."""

from __future__ import annotations

import torch
from torch import Tensor

from meal_pl import losses
from meal_pl.rollout import Rollout


def distinct_token_share(responses: Tensor, mask: Tensor) -> Tensor:
    """(S,) distinct tokens / tokens of each response (distinct-1; 0 for an empty one): near 0 when a policy
    repeats one token, the usual sign that it found text a reward scores well without answering."""
    tokens = responses.masked_fill(~mask.bool(), -1).sort(-1).values  # padding (-1) sorts first
    first = torch.ones_like(tokens, dtype=torch.bool)
    first[:, 1:] = tokens[:, 1:] != tokens[:, :-1]
    return (first & (tokens >= 0)).sum(-1) / mask.sum(-1).clamp(min=1)


def step_metrics(r: Rollout, names: list[str], loss: Tensor, kl: Tensor, lr: float) -> tuple[dict[str, float], dict[str, int]]:
    """(metrics by tag as plain floats, this step's counts to add to the run's counters).

    Every value is computed where the rollout lives and brought to the host in one transfer: no per-metric
    device syncs, no Python loop over samples.
    """
    B, N, K = r.shape
    flat_valid = r.valid.flatten()
    values = {f"reward/{n}": r.raw[flat_valid, k].mean() for k, n in enumerate(names)}
    values["reward/scalarized"] = (losses.scalarize(r.weights, r.rewards) * r.selection).sum(-1).mean()
    for k, n in enumerate(names):
        values[f"pwn/weight_{n}"] = r.weights[:, k].mean()
    values["train/policy_loss"] = loss.detach()
    values["train/kl"] = (kl.detach() * r.selection.flatten()).sum() / B
    values["train/rejection_rate"] = 1 - r.keep.sum() / flat_valid.sum().clamp(min=1)
    values["train/exploration_rate"] = r.explore.float().mean()
    lengths = r.resp_mask.sum(-1)
    values["perf/tokens_per_s"] = lengths.sum() / max(r.gen_time, 1e-9)
    values["train/response_length"] = lengths.float().mean()
    values["train/distinct_tokens"] = distinct_token_share(r.responses, r.resp_mask).float().mean()
    tallies = {f"count/{k}": torch.as_tensor(v, device=lengths.device) for k, v in r.counts.items()}
    tallies["count/empty_responses"] = (lengths <= 1).sum()  # EOS at step 0 or nothing
    groups = r.responses.view(B, N, -1)  # a group of N identical (padded) responses
    tallies["count/identical_groups"] = (groups == groups[:, :1]).all(-1).all(-1).sum() if N > 1 else lengths.new_zeros(())
    keys = list(values) + list(tallies)
    host = torch.stack([v.float() for v in (*values.values(), *tallies.values())]).tolist()  # the one transfer
    metrics = dict(zip(keys[: len(values)], host, strict=False))
    metrics["train/lr"] = float(lr)
    counts = {k.removeprefix("count/"): round(v) for k, v in zip(keys[len(values):], host[len(values):], strict=True)}
    return metrics, counts


def publish(trainer, metrics: dict[str, float], weights: Tensor, names: list[str], histogram_every_n_steps: int) -> None:
    """The step's metrics into trainer.callback_metrics (every step), to the loggers (every log_every_n_steps) and
    the PWN's weights as histograms (every histogram_every_n_steps)."""
    step = trainer.global_step
    trainer.callback_metrics.update(zip(metrics, torch.tensor(list(metrics.values())).unbind(), strict=True))
    if step % max(1, trainer.log_every_n_steps) == 0:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
    experiment = getattr(trainer.logger, "experiment", None)
    if hasattr(experiment, "add_histogram") and step % histogram_every_n_steps == 0:
        for k, n in enumerate(names):
            experiment.add_histogram(f"pwn/weights_{n}", weights[:, k].float().cpu(), step)
