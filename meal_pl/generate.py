"""Respond to a prompt with a trained checkpoint under a preference you give, or one the PWN picks.

    python -m meal_pl.generate ckpt_path=RUN/checkpoints/last.ckpt prompt="How do I bake bread?" preference=[0.8,0.2]
    python -m meal_pl.generate ckpt_path=RUN prompt="How do I bake bread?" preference=auto
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

import meal_pl  # noqa: F401  (python -m meal_pl.<command> sets the offline default before transformers is imported)
from meal_pl.conditioning import check_preference
from meal_pl.data import _as_prompt
from meal_pl.precision import use_run_precision
from meal_pl.ranges import check_integer
from meal_pl.restore import find_checkpoint, load_run, parse_args, run_cli
from meal_pl.sampling import encode_prompts


@dataclass
class GenerateArgs:
    ckpt_path: str | None = None  # a .ckpt file, or a run directory (its checkpoints/last.ckpt)
    prompt: str | None = None  # a bare request, or HH text ending in "\n\nAssistant:"
    preference: list[float] | str = "auto"  # K weights summing to 1, or auto: the PWN's choice
    num_samples: int = 1
    max_new_tokens: int | None = None  # null: the run's algorithm.sampler.max_new_tokens
    greedy: bool = False
    seed: int | None = None  # null: the run's algorithm.eval_seed (same output every call)
    device: str = "auto"  # auto (a GPU where torch sees one, else cpu), cpu, cuda or cuda:N


def read_preference(value: list[float] | str, names: list[str]) -> torch.Tensor | None:
    """The checked (K,) preference, or None for `auto`."""
    if value == "auto":
        return None
    if isinstance(value, str):
        raise ValueError(f"preference={value!r} must be a list of {len(names)} weights such as [0.8,0.2], or auto")
    return check_preference(value, names)


def generate(module, prompt: str, preference: torch.Tensor | None, num_samples: int = 1) -> tuple[torch.Tensor, list[str]]:
    """(the (K,) preference used, num_samples responses); preference None lets the PWN choose."""
    text = _as_prompt(prompt)
    if preference is None:
        ids, mask, _ = encode_prompts(module.tokenizer, [text], module.max_prompt_length, module.device)
        with torch.no_grad():
            preference = module.pwn(module.prompt_features(ids, mask))[0].float().cpu()
    weights = preference.float()[None].expand(num_samples, -1)
    return preference, module.respond([text] * num_samples, weights)


def main(argv: list[str]) -> None:
    args = parse_args(argv, GenerateArgs(), required=("ckpt_path", "prompt"))
    check_integer("num_samples", args.num_samples, 1)
    if args.max_new_tokens is not None:
        check_integer("max_new_tokens", args.max_new_tokens, 1, ", or null for the run's algorithm.sampler.max_new_tokens")
    _, run = find_checkpoint(args.ckpt_path)
    names = list(OmegaConf.load(run / ".hydra" / "config.yaml").objective.rewards)
    preference = read_preference(args.preference, names)  # checked before the slow model load
    module, _, cfg = load_run(args.ckpt_path, args.device)
    use_run_precision(module, cfg, module.device)  # the run's own answers: bf16 where it trained in bf16
    if args.max_new_tokens is not None:
        module.sampler.max_new_tokens = args.max_new_tokens
        module.sampler.min_new_tokens = min(module.sampler.min_new_tokens, args.max_new_tokens)
    module.eval_greedy = args.greedy
    if args.seed is not None:
        module.eval_seed = args.seed
    _, _, truncated = encode_prompts(module.tokenizer, [_as_prompt(args.prompt)], module.max_prompt_length)
    if truncated:  # as in training, where the run counted it: the request at the end is what is answered
        print(f"note: the prompt is longer than the run's algorithm.max_prompt_length ({module.max_prompt_length} tokens); "
              "it keeps its last tokens", file=sys.stderr)
    chosen, responses = generate(module, args.prompt, preference, args.num_samples)
    source = "chosen by the PWN" if preference is None else "given"
    print(f"preference ({source}): " + ", ".join(f"{n}={w:.2f}" for n, w in zip(names, chosen.tolist(), strict=True)))
    print(f"tags: {module.conditioner.format(chosen[None])[0]}")
    for i, response in enumerate(responses):
        print(f"--- response {i + 1}" if len(responses) > 1 else "--- response")
        print(response.strip())


if __name__ == "__main__":
    run_cli(main, GenerateArgs)
