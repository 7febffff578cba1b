"""Optional short SFT warm start: teach the policy the data's language and the meaning of the tags.

Each (prompt, response) pair is trained under the tags of the trade-off it achieves (METHOD.md step 5
applied to the data), so the policy is steerable before Meal starts; this is RiC's offline stage. The pairs are the
data's answers, or (`warm_start.source=policy`) the policy's own, sampled first.
"""

from __future__ import annotations

import contextlib
import logging
import random

import torch
from torch import Tensor
from transformers import PreTrainedModel

from meal_pl.dpo_warm_start import dpo_metrics, dpo_warm_start, pair_batches, pair_logprobs, ranked_pairs
from meal_pl.losses import masked_mean, relabel, token_logprobs
from meal_pl.offline_steps import offline_steps
from meal_pl.pareto import simplex_grid
from meal_pl.sampling import encode_prompts, position_ids
from meal_pl.sequences import encode_responses

_log = logging.getLogger("meal_pl")


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


def warm_start_pairs(module, stage, datamodule, announce: bool = True) -> tuple[list[tuple[str, str]], str]:
    """The warm start's (prompt, response) pairs and what they are, from `warm_start.source`: the data's answers, or
    the policy's own to the first `warm_start.prompts` training prompts (seeds: the stream's, +1, ...)."""
    if stage.source != "policy":
        return datamodule.sft_pairs(), "answers of the data"
    prompts = list(datamodule.train_prompts)[: stage.prompts or None]
    if announce:  # minutes on a real model: say so before it starts
        _log.info(f"warm start: sampling the policy's own answers, {stage.answers} to each of "
                  f"{len(prompts)} training prompts (warm_start.source=policy)")
    pairs, dropped = own_answers(module, prompts, stage.answers, torch.initial_seed())
    return pairs, f"of the policy's own answers ({dropped} empty or echoing the conditioning's text dropped)"


def split_heldout(pairs: list[tuple[str, str]], share: float) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(trained, held out): a `share` of the pairs' prompts, drawn with a fixed seed (the same for every run seed),
    with all their answers kept out of training for the stage's metrics."""
    prompts = sorted({p for p, _ in pairs})
    held = set(random.Random(0).sample(prompts, round(share * len(prompts)))) if share > 0 else set()
    return [x for x in pairs if x[0] not in held], [x for x in pairs if x[0] in held]


def within_budget(pairs: list[tuple[str, str]], budget: int, by_prompt: bool) -> list[tuple[str, str]]:
    """The pairs `steps x batch_size` can use: all of them when they fit, else a fixed draw (seed 0) of `budget`
    answers, or (DPO, which ranks each prompt's answers) of `budget` prompts with all their answers. Scoring and
    tokenising the rest (hundreds of thousands of reward passes on a hub data set) would be work no step reads."""
    units = sorted({p for p, _ in pairs}) if by_prompt else list(range(len(pairs)))
    if len(units) <= budget:
        return pairs
    kept = set(random.Random(0).sample(units, budget))
    return [pair for i, pair in enumerate(pairs) if (pair[0] if by_prompt else i) in kept]


def loss_curve(history: list[float]) -> dict[str, float]:
    """The loss's first and last values and the means of its first and last tenth: a first batch against a last
    one cannot tell learning from noise."""
    tenth = max(1, len(history) // 10)
    return {"steps": len(history), "first": history[0], "last": history[-1],
            "first_tenth": sum(history[:tenth]) / tenth, "last_tenth": sum(history[-tenth:]) / tenth}


def run_warm_start(module, stage, datamodule, announce: bool = True) -> dict:
    """Train a MealModule's policy by the warm start `stage` (meal_pl.warm_start.WarmStart) on the data's or its own
    answers; what it did and measured (the loss curve, held-out figures where warm_start.heldout > 0)."""
    pairs, what = warm_start_pairs(module, stage, datamodule, announce)
    return warm_start_on(module, stage, pairs, what, announce)


def warm_start_on(module, stage, pairs: list[tuple[str, str]], what: str = "answers", announce: bool = True) -> dict:
    """The warm start `stage` on these (prompt, response) pairs, less the held-out share (warm_start.heldout)."""
    pairs, heldout = split_heldout(pairs, stage.heldout)
    available = len(pairs)
    pairs = within_budget(pairs, stage.steps * stage.batch_size, by_prompt=stage.loss == "dpo")
    if announce and len(pairs) < available:
        _log.info(f"warm start: {stage.steps} steps of {stage.batch_size} use at most {len(pairs)} of the {available} "
                  f"{'answers' if stage.loss == 'sft' else 'answers (their prompts)'}: only those are scored and tokenised")
    if announce:
        held = f", {len(heldout)} held out for its metrics" if heldout else ""
        _log.info(f"warm start: {stage.steps} DPO steps on {len(pairs)} {what}{held}, each prompt's answers ranked at the "
                  f"simplex's {'corners' if stage.dpo_points == 0 else f'{stage.dpo_points}-point grid'} "
                  "(warm_start=dpo, warm_start.steps)" if stage.loss == "dpo" else
                  f"warm start: {stage.steps} SFT steps on {len(pairs)} {what}{held} under the tags of the trade-off "
                  "each achieves (warm_start.steps)")
    prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    raw = module.rewards(prompts, responses)
    module.reward_norm.update(raw[torch.isfinite(raw).all(-1)])
    seed = stage.seed or 0  # the batches' order
    if stage.loss == "dpo":
        history, held = dpo_warm_start_module(module, stage, prompts, responses, raw, heldout, seed)
    else:
        batches = sft_batches(module, stage, prompts, responses, raw)
        held_batches = sft_batches(module, stage, [p for p, _ in heldout], [r for _, r in heldout]) if heldout else []
        before = heldout_nll(module, held_batches)
        history = warm_start(module.policy, batches, stage.steps, stage.lr, seed=seed, conditioner=module.conditioner)
        held = {"answers": len(heldout), "nll_before": before, "nll_after": heldout_nll(module, held_batches)} if heldout else {}
    return {"pairs": len(pairs), "what": what, "loss": loss_curve(history) if history else {}, "heldout": held}


def sft_batches(module, stage, prompts: list[str], responses: list[str], raw: Tensor | None = None) -> list:
    """SFT batches: each answer under the tags of the trade-off it achieves (or neutral tags, objective's choice)."""
    raw = module.rewards(prompts, responses) if raw is None else raw
    tags = relabel(module.reward_norm.normalize(raw).nan_to_num(0.0), module.sampler.relabel_tau)
    if stage.tags == "neutral":  # the prompt, not the tag, must explain the response's style
        tags = torch.full_like(tags, 1.0 / tags.shape[-1])
    return tagged_batches(module.tokenizer, module.conditioner, prompts, responses, tags, module.max_prompt_length,
                          module.sampler.max_new_tokens, stage.batch_size)


@torch.no_grad()
def heldout_nll(module, batches: list) -> float | None:
    """Mean per-token NLL of held-out answers (eval mode), or None without any."""
    if not batches:
        return None
    was_training = module.policy.training
    module.policy.eval()
    try:
        losses = []
        for batch in batches:
            batch = [t.to(module.policy.device) for t in batch]
            with module.conditioner.preference(module.policy, module.conditioner.weights_from_ids(batch[0])):
                losses.append(float(sft_loss(module.policy, *batch)))
    finally:
        module.policy.train(was_training)
    return sum(losses) / len(losses)


def dpo_preferences(num_objectives: int, points: int) -> Tensor:
    """The preferences the DPO warm start ranks answers at: the K corners (points=0), or the simplex grid of `points`
    (K=2, 5: w_1 = 0, 0.25, ..., 1)."""
    if points == 0:
        return torch.eye(num_objectives)
    if points < num_objectives:
        raise ValueError(f"warm_start.dpo_points={points} is below the {num_objectives} objectives' corners: "
                         f"use 0 (the corners) or at least {num_objectives}")
    return simplex_grid(num_objectives, points)


def dpo_warm_start_module(module, stage, prompts: list[str], responses: list[str], raw: Tensor,
                          heldout: list[tuple[str, str]], seed: int = 0) -> tuple[list[float], dict]:
    """The warm start as DPO (warm_start=dpo): each prompt's answers ranked at the corners or on a grid of the simplex
    (warm_start.dpo_points), on the run's normalised rewards; the loss history and TRL's figures on held-out pairs."""
    preferences = dpo_preferences(raw.shape[-1], stage.dpo_points)
    triples, ranked_under = ranked_pairs(prompts, responses, module.reward_norm.normalize(raw), preferences)
    if not triples:
        raise ValueError("warm_start=dpo found no prompt with two answers that differ in a reward: use data with two "
                         "answers per prompt, or warm_start.source=policy with warm_start.answers >= 2")
    if module._trainer is None or module.trainer.is_global_zero:
        ranked = set(triples)
        reversed_pairs = sum((p, r, c) in ranked for p, c, r in ranked) // 2
        where = "corner" if stage.dpo_points == 0 else "preference"
        _log.info(f"warm start: {len(triples)} ranked pairs at {len(preferences)} preferences; {reversed_pairs} answer "
                  f"pairs ranked one way at one {where} and the other way at another (a conflict the preference must "
                  "tell apart)")

    def batches_of(triples, ranked_under):
        return pair_batches(module.tokenizer, module.conditioner, triples, ranked_under, module.max_prompt_length,
                            module.sampler.max_new_tokens, stage.batch_size)

    held_batches = []
    if heldout:
        held_prompts, held_answers = [p for p, _ in heldout], [r for _, r in heldout]
        held_raw = module.rewards(held_prompts, held_answers)
        held_batches = batches_of(*ranked_pairs(held_prompts, held_answers, module.reward_norm.normalize(held_raw), preferences))
    held_reference = pair_logprobs(module.policy, held_batches, module.conditioner)
    history = dpo_warm_start(module.policy, batches_of(triples, ranked_under), stage.steps, stage.lr, stage.dpo_beta,
                             seed=seed, conditioner=module.conditioner, sft_weight=stage.sft_weight)
    held = dpo_metrics(pair_logprobs(module.policy, held_batches, module.conditioner), held_reference, stage.dpo_beta)
    return history, held


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
