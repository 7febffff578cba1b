"""The warm start as DPO on answer pairs ranked at preferences on the simplex (warm_start.loss=dpo).

SFT under the trade-off each answer achieves (meal_pl/sft.py, RiC's offline stage) shows the policy one answer at a
time; what w should change is only in the difference between answers. Here each prompt's answers are ranked under
each corner w = e_k (the answer with the most of objective k over the one with the least, `losses.preference_pairs` at the corners),
and the policy, conditioned on that corner's preference, learns the ranking by DPO against itself before the warm
start. Where a prompt's answers conflict (one more helpful, the other more harmless), the two corners rank them
oppositely: the preference is all that tells the two rankings apart. With `warm_start.dpo_points` the
answers are also ranked at the preferences between the corners (`losses.preference_pairs`, on normalised rewards),
so the policy is shown where along the simplex a conflict's ranking turns, not only its two ends.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from meal_pl.losses import dpo_sft_loss, preference_pairs
from meal_pl.offline_steps import offline_steps, visited_batches
from meal_pl.sampling import encode_prompts
from meal_pl.sequences import encode_responses, sequence_logprobs

PairBatch = tuple[Tensor, Tensor, Tensor, Tensor]  # (prefix, prefix_mask, responses, resp_mask), chosen rows then rejected


def ranked_pairs(prompts: list[str], responses: list[str], rewards: Tensor, preferences: Tensor
                 ) -> tuple[list[tuple[str, str, str]], Tensor]:
    """(prompt, chosen, rejected) triples and the preference (n,K) each is ranked under, from (prompt, response) pairs
    and their rewards (n,K): each prompt's answers grouped, then ranked at every row of `preferences` (G,K: the
    corners or a grid, `sft.dpo_preferences`; `losses.preference_pairs`)."""
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_prompt.setdefault(p, []).append(i)
    triples, ranked_under = [], []
    for rows in by_prompt.values():  # equal answers tie at every preference and give no pair
        for _, c, r, g in preference_pairs(rewards[rows][None], preferences):
            triples.append((prompts[rows[c]], responses[rows[c]], responses[rows[r]]))
            ranked_under.append(preferences[g].to(torch.float32))
    return triples, (torch.stack(ranked_under) if ranked_under else torch.zeros(0, rewards.shape[-1]))


def pair_batches(tokenizer, conditioner, triples: list[tuple[str, str, str]], preferences: Tensor, max_prompt_length: int,
                 max_new_tokens: int, batch_size: int) -> list[PairBatch]:
    """Batches of `batch_size` triples: each prompt under the preference it is ranked at, twice (chosen rows, then
    rejected)."""
    batches = []
    for i in range(0, len(triples), batch_size):
        chunk = triples[i : i + batch_size]
        ids, mask, _ = encode_prompts(tokenizer, [p for p, _, _ in chunk], max_prompt_length)
        ids, mask = conditioner.condition(ids, mask, preferences[i : i + batch_size])
        resp, resp_mask = encode_responses(tokenizer, [c for _, c, _ in chunk] + [r for _, _, r in chunk], max_new_tokens)
        batches.append((ids.repeat(2, 1), mask.repeat(2, 1), resp, resp_mask))
    return batches


def summed_logprobs(policy: PreTrainedModel, batch: PairBatch, conditioner) -> tuple[Tensor, Tensor]:
    """log pi(chosen | x, w) and log pi(rejected | x, w), summed over each answer's tokens: (b,), (b,)."""
    prefix, prefix_mask, resp, resp_mask = batch
    logp = (sequence_logprobs(policy, prefix, prefix_mask, resp, conditioner=conditioner) * resp_mask).sum(-1)
    return logp.chunk(2)


def dpo_warm_start(policy: PreTrainedModel, batches: list[PairBatch], steps: int, lr: float, beta: float, seed: int = 0,
                   conditioner=None, sft_weight: float = 0.0) -> list[float]:
    """`steps` AdamW steps of DPO over the batches (in a seeded order), against the policy as it is before the first
    step (its log-probabilities computed once, eval mode); the loss history."""
    if steps <= 0 or not batches:
        return []
    policy.eval()
    with torch.no_grad():  # only the batches the steps will draw: fewer steps than batches leave some unread
        reference = {i: summed_logprobs(policy, [t.to(policy.device) for t in batches[i]], conditioner)
                     for i in visited_batches(len(batches), steps, seed)}

    def batch_loss(i: int) -> Tensor:
        batch = [t.to(policy.device) for t in batches[i]]
        chosen, rejected = summed_logprobs(policy, batch, conditioner)
        chosen_tokens = batch[3].sum(-1).chunk(2)[0]  # the chosen rows come first
        return dpo_sft_loss(chosen, rejected, *reference[i], beta, chosen_tokens, sft_weight)

    return offline_steps(policy, len(batches), steps, lr, batch_loss, seed)


@torch.no_grad()
def pair_logprobs(policy: PreTrainedModel, batches: list[PairBatch], conditioner) -> list[tuple[Tensor, Tensor]]:
    """Each batch's (chosen, rejected) summed log-probabilities in eval mode: the held-out pairs' figures."""
    was_training = policy.training
    policy.eval()
    try:
        return [tuple(t.float().cpu() for t in summed_logprobs(policy, [t.to(policy.device) for t in b], conditioner))
                for b in batches]
    finally:
        policy.train(was_training)


def dpo_metrics(policy: list[tuple[Tensor, Tensor]], reference: list[tuple[Tensor, Tensor]], beta: float) -> dict:
    """TRL DPOTrainer's figures over pairs: the implicit rewards beta * (log pi - log pi_ref) of the chosen and the
    rejected answers, their margin, and the share of pairs whose chosen answer gets the larger (`rewards/accuracies`)."""
    if not policy:
        return {}
    chosen = beta * (torch.cat([c for c, _ in policy]) - torch.cat([c for c, _ in reference]))
    rejected = beta * (torch.cat([r for _, r in policy]) - torch.cat([r for _, r in reference]))
    return {"pairs": int(chosen.numel()), "rewards/chosen": float(chosen.mean()), "rewards/rejected": float(rejected.mean()),
            "rewards/margins": float((chosen - rejected).mean()), "rewards/accuracies": float((chosen > rejected).float().mean())}
