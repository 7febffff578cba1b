"""Optional short SFT warm start: teach the policy the data's language and the meaning of the tags.

Each (prompt, response) pair is trained under the tags of the trade-off it achieves (METHOD.md step 5
applied to the data), so the policy is steerable before Meal starts; this is RiC's offline stage. The pairs are the
data's answers, or (`algorithm.warm_start_source=policy`) the policy's own, sampled first.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import Tensor
from transformers import PreTrainedModel

from meal_pl.dpo_warm_start import dpo_warm_start, pair_batches, ranked_pairs
from meal_pl.losses import masked_mean, relabel, token_logprobs
from meal_pl.offline_steps import offline_steps
from meal_pl.pareto import simplex_grid
from meal_pl.sampling import encode_prompts, position_ids
from meal_pl.sequences import encode_responses

_log = logging.getLogger("meal_pl")


def warm_start_length(objective, default: int) -> int:
    """The warm start's steps: an objective whose premise needs its own length (synthetic_prompted) sets
    `objective.warm_start_steps`, which wins over the algorithm's `default`."""
    own_steps = (objective or {}).get("warm_start_steps")
    return int(default if own_steps is None else own_steps)


def sft_loss(policy: PreTrainedModel, prefix_ids: Tensor, prefix_mask: Tensor, responses: Tensor, resp_mask: Tensor) -> Tensor:
    """Mean per-token NLL of right-padded responses after left-padded prefixes."""
    ids = torch.cat([prefix_ids, responses], 1)
    mask = torch.cat([prefix_mask, resp_mask.long()], 1)
    out = policy(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=responses.shape[1] + 1)
    logp = token_logprobs(out.logits[:, :-1], responses)
    return masked_mean(-logp, resp_mask).mean()


def warm_start(
    policy: PreTrainedModel,
    batches: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    steps: int,
    lr: float,
    seed: int = 0,
    conditioner=None,
) -> list[float]:
    """Run `steps` AdamW steps over pre-built (prefix_ids, prefix_mask, responses, resp_mask) batches.

    With a `conditioner`, each batch runs under the preference its prefixes' tags say (backends that
    read w beyond the tags need it: meal_pl.conditioning).
    """
    if steps <= 0 or not batches:
        return []

    def batch_loss(i: int) -> Tensor:
        batch = [t.to(policy.device) for t in batches[i]]
        with (conditioner.preference(policy, conditioner.weights_from_ids(batch[0])) if conditioner is not None
              else contextlib.nullcontext()):
            return sft_loss(policy, *batch)

    return offline_steps(policy, len(batches), steps, lr, batch_loss, seed)


@torch.no_grad()
def own_answers(module, prompts: list[str], answers: int, seed: int) -> tuple[list[tuple[str, str]], int]:
    """The policy's own (prompt, answer) pairs and how many answers were dropped: `answers` per prompt under the
    uniform preference, sampled as the evaluation samples (eval mode, the sampler's settings) under the seeds seed,
    seed + 1, .... Trained under the trade-off each achieves, they tie w to the variety of the policy's own answers,
    where the data's answers would teach a pretrained policy the data's style (docs/results.md). Empty answers and
    answers that repeat the conditioning's own text (conditioning=text's "Preference: helpful 0.50, ...", which
    SmolLM2 sometimes echoes) are dropped: trained on, they teach the policy to print its preference."""
    weights = torch.full((len(prompts), len(module.objective_names)), 1.0 / len(module.objective_names))
    marker = getattr(module.conditioner, "header", "").strip()
    was_training = module.training
    module.eval()
    try:
        pairs = [pair for a in range(answers) for pair in zip(prompts, module.respond(prompts, weights, seed=seed + a))]
    finally:
        module.train(was_training)
    kept = [(p, a) for p, a in pairs if a.strip() and not (marker and marker in a)]
    return kept, len(pairs) - len(kept)


def warm_start_pairs(module, datamodule, announce: bool = True) -> tuple[list[tuple[str, str]], str]:
    """The warm start's (prompt, response) pairs and what they are, from `algorithm.warm_start_source`: the data's
    answers, or the policy's own to the first `warm_start_prompts` training prompts (seeds the run's seed, +1, ...)."""
    if module.warm_start_source != "policy":
        return datamodule.sft_pairs(), "answers of the data"
    prompts = list(datamodule.train_prompts)[: module.warm_start_prompts or None]
    if announce:  # minutes on a real model: say so before it starts
        _log.info(f"warm start: sampling the policy's own answers, {module.warm_start_answers} to each of "
                  f"{len(prompts)} training prompts (algorithm.warm_start_source=policy)")
    pairs, dropped = own_answers(module, prompts, module.warm_start_answers, torch.initial_seed())
    return pairs, f"of the policy's own answers ({dropped} empty or echoing the conditioning's text dropped)"


def warm_start_module(module, pairs: list[tuple[str, str]], seed: int = 0) -> list[float]:
    """A MealModule's warm start: SFT on (prompt, response) pairs under the tags of the trade-off each achieves."""
    prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    raw = module.rewards(prompts, responses)
    module.reward_norm.update(raw[torch.isfinite(raw).all(-1)])
    if module.warm_start_loss == "dpo":
        return dpo_warm_start_module(module, prompts, responses, raw, seed)
    tags = relabel(module.reward_norm.normalize(raw).nan_to_num(0.0), module.sampler.relabel_tau)
    if module.warm_start_tags == "neutral":  # the prompt, not the tag, must explain the response's style
        tags = torch.full_like(tags, 1.0 / tags.shape[-1])
    batches = tagged_batches(module.tokenizer, module.conditioner, prompts, responses, tags, module.max_prompt_length,
                             module.sampler.max_new_tokens, module.warm_start_batch_size)
    return warm_start(module.policy, batches, module.warm_start_steps, module.warm_start_lr, seed=seed,
                      conditioner=module.conditioner)


def dpo_preferences(num_objectives: int, points: int) -> Tensor:
    """The preferences the DPO warm start ranks answers at: the K corners (points=0), or the simplex grid of `points`
    (K=2, 5: w_1 = 0, 0.25, ..., 1)."""
    if points == 0:
        return torch.eye(num_objectives)
    if points < num_objectives:
        raise ValueError(f"algorithm.warm_start_dpo_points={points} is below the {num_objectives} objectives' corners: "
                         f"use 0 (the corners) or at least {num_objectives}")
    return simplex_grid(num_objectives, points)


def dpo_warm_start_module(module, prompts: list[str], responses: list[str], raw: Tensor, seed: int = 0) -> list[float]:
    """The warm start as DPO (algorithm.warm_start_loss=dpo): each prompt's answers ranked at the corners or on a grid
    of the simplex (algorithm.warm_start_dpo_points), on the run's normalised rewards."""
    preferences = dpo_preferences(raw.shape[-1], module.warm_start_dpo_points)
    triples, ranked_under = ranked_pairs(prompts, responses, module.reward_norm.normalize(raw), preferences)
    if not triples:
        raise ValueError("algorithm.warm_start_loss=dpo found no prompt with two answers that differ in a reward: use "
                         "data with two answers per prompt, or algorithm.warm_start_source=policy with warm_start_answers >= 2")
    if module._trainer is None or module.trainer.is_global_zero:
        ranked = set(triples)
        reversed_pairs = sum((p, r, c) in ranked for p, c, r in ranked) // 2
        where = "corner" if module.warm_start_dpo_points == 0 else "preference"
        _log.info(f"warm start: {len(triples)} ranked pairs at {len(preferences)} preferences; {reversed_pairs} answer "
                  f"pairs ranked one way at one {where} and the other way at another (a conflict the preference must "
                  "tell apart)")
    batches = pair_batches(module.tokenizer, module.conditioner, triples, ranked_under, module.max_prompt_length,
                           module.sampler.max_new_tokens, module.warm_start_batch_size)
    return dpo_warm_start(module.policy, batches, module.warm_start_steps, module.warm_start_lr,
                          module.warm_start_dpo_beta, seed=seed, conditioner=module.conditioner)


def tagged_batches(tokenizer, conditioner, prompts: list[str], responses: list[str], tags: Tensor,
                   max_prompt_length: int, max_new_tokens: int, batch_size: int) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """(prefix_ids, prefix_mask, responses, resp_mask) batches: each pair under its (S,K) tags."""
    batches = []
    for i in range(0, len(prompts), batch_size):
        sl = slice(i, i + batch_size)
        ids, mask, _ = encode_prompts(tokenizer, prompts[sl], max_prompt_length)
        ids, mask = conditioner.condition(ids, mask, tags[sl])
        resp, resp_mask = encode_responses(tokenizer, responses[sl], max_new_tokens)
        batches.append((ids, mask, resp, resp_mask))
    return batches
