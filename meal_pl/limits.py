"""Length limits checked before training: prompt + preference tags + response must fit the model."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_warn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from meal_pl.escaping import encode_without_tags


def check_context(policy: PreTrainedModel, max_prompt_length: int, num_tags: int, max_new_tokens: int) -> None:
    """Prompt + preference tags + response must fit the model's context; say which knob to turn if not."""
    context = getattr(policy.config, "max_position_embeddings", None)
    if max_prompt_length < 1:
        raise ValueError(f"algorithm.max_prompt_length={max_prompt_length} must be >= 1")
    if context is not None and max_prompt_length + num_tags + max_new_tokens > context:
        raise ValueError(
            f"algorithm.max_prompt_length={max_prompt_length} + {num_tags} preference tags + "
            f"algorithm.sampler.max_new_tokens={max_new_tokens} exceed the model context of {context} tokens; lower "
            "them (or raise model.max_position_embeddings for model=tiny)"
        )


def check_prompt_lengths(tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_prompt_length: int,
                         prompt_overflow: str, context: int | None) -> None:
    """Refuse (prompt_overflow=error) or announce (truncate) prompts over max_prompt_length, before any step."""
    if not prompts:
        return
    lengths = [len(ids) for ids in encode_without_tags(tokenizer, prompts)]
    over = [i for i, n in enumerate(lengths) if n > max_prompt_length]
    if not over:
        return
    longest = max(over, key=lambda i: lengths[i])
    if prompt_overflow == "error":
        raise ValueError(
            f"{len(over)} of {len(prompts)} prompts are longer than algorithm.max_prompt_length="
            f"{max_prompt_length} tokens (longest: {lengths[longest]} tokens, {prompts[longest][:40]!r}...); "
            f"raise algorithm.max_prompt_length (model context: {context} tokens) or set "
            "algorithm.prompt_overflow=truncate to keep each prompt's last tokens"
        )
    rank_zero_warn(
        f"{len(over)} of {len(prompts)} prompts are longer than algorithm.max_prompt_length={max_prompt_length} "
        f"tokens (longest: {lengths[longest]}); they keep their last {max_prompt_length} tokens, counted in "
        "count/truncated_prompts when used (algorithm.prompt_overflow=error refuses them instead)"
    )
