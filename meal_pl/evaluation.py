"""The evaluation interface of MealModule (ParetoEvalCallback, the generations callback, the CLIs, the bench):
responses under given preferences, the front's rewards, the PWN's own choice."""

from __future__ import annotations

import torch
from torch import Tensor

from meal_pl.sampling import encode_prompts


class FrontEvaluation:
    """Mixed into MealModule, whose policy, tokenizer, rewards, PWN and settings it uses."""

    def eval_prompts(self, n: int) -> list[str]:
        return self.trainer.datamodule.eval_prompts(n)

    @torch.no_grad()
    def respond(self, prompts: list[str], weights: Tensor, seed: int | None = None) -> list[str]:
        """One response per prompt under per-prompt preferences (B,K); deterministic for a given policy.

        Sampling (the default) uses its own fixed seed (`seed`, else eval_seed) inside a forked RNG, so evaluating
        neither varies between calls nor moves the training run's random stream; greedy decoding is one flag away.
        """
        texts = []
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.eval_seed if seed is None else seed)
            for i in range(0, len(prompts), self.eval_batch_size):
                chunk = slice(i, i + self.eval_batch_size)
                ids, mask, _ = encode_prompts(self.tokenizer, prompts[chunk], self.max_prompt_length, self.device)
                prefix, prefix_mask = self.conditioner.condition(ids, mask, self.tag_weights(weights[chunk].to(self.device)))
                out = self.generate(prefix, prefix_mask, greedy=self.eval_greedy, num_samples=1)
                texts += self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return texts

    @torch.no_grad()
    def evaluate_front_per_prompt(self, prompts: list[str], weights: Tensor) -> Tensor:
        """Raw rewards (M,P,K) of one response per prompt under each preference of `weights` (M,K)."""
        M, P = len(weights), len(prompts)
        return self.rewards(prompts * M, self.respond(prompts * M, weights.repeat_interleave(P, 0))).view(M, P, -1)

    @torch.no_grad()
    def evaluate_front(self, prompts: list[str], weights: Tensor) -> Tensor:
        """Mean raw reward (M,K) of responses to `prompts` under each preference of `weights` (M,K)."""
        return self.evaluate_front_per_prompt(prompts, weights).nanmean(1)

    @torch.no_grad()
    def pwn_weights(self, prompts: list[str]) -> Tensor:
        """The PWN's own preference (P,K) for each prompt: no exploration, no generation."""
        ids, mask, _ = encode_prompts(self.tokenizer, prompts, self.max_prompt_length, self.device)
        return self.pwn(self.prompt_features(ids, mask)).cpu()

    @torch.no_grad()
    def evaluate_pwn_choice_per_prompt(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """(weights (P,K), raw rewards (P,K)): each prompt answered under the PWN's own preference for it
        (`preference=auto`: no exploration), with the evaluation's fixed seed."""
        weights = self.pwn_weights(prompts)
        return weights, self.rewards(prompts, self.respond(prompts, weights)).float().cpu()

    @torch.no_grad()
    def evaluate_pwn_choice(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """The preference the PWN picks by itself (mean over prompts) and the mean raw reward it reaches."""
        weights, raw = self.evaluate_pwn_choice_per_prompt(prompts)
        return weights.mean(0), raw.nanmean(0)


def front_over_draws(module, prompts: list[str], weights: Tensor, draws: int = 1) -> Tensor:
    """Raw rewards (M,P,K) at the preferences `weights` (M,K), each prompt's averaged over `draws` answers sampled
    under the seeds eval_seed, eval_seed + 1, ... (one draw: `evaluate_front_per_prompt` itself): the bootstrap over
    prompts then sees less sampling noise."""
    if draws == 1:
        return module.evaluate_front_per_prompt(prompts, weights)
    runs = [under_seed(module, d, module.evaluate_front_per_prompt, prompts, weights).float().cpu() for d in range(draws)]
    return torch.stack(runs).nanmean(0)


def pwn_choice_over_draws(module, prompts: list[str], draws: int = 1) -> tuple[Tensor, Tensor]:
    """(the PWN's weights (P,K), raw rewards (P,K)) under its own preference, each prompt's rewards averaged over
    `draws` answers as in front_over_draws (the weights read the prompt alone: the same at every draw)."""
    if draws == 1:
        return module.evaluate_pwn_choice_per_prompt(prompts)
    runs = [under_seed(module, d, module.evaluate_pwn_choice_per_prompt, prompts) for d in range(draws)]
    return runs[0][0], torch.stack([rewards for _, rewards in runs]).nanmean(0)


def under_seed(module, offset: int, fn, *args):
    """fn(*args) with the module's evaluation seed moved by `offset`, restored afterwards."""
    first = module.eval_seed
    module.eval_seed = first + offset
    try:
        return fn(*args)
    finally:
        module.eval_seed = first
