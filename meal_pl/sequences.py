"""Token sequences of a policy: log-probabilities of responses after a prefix, and packing id lists into tensors."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from meal_pl import losses
from meal_pl.conditioning import TextTagConditioner
from meal_pl.escaping import encode_without_tags
from meal_pl.models import is_peft
from meal_pl.sampling import position_ids


def sequence_logprobs(model: PreTrainedModel, prefix: Tensor, prefix_mask: Tensor, responses: Tensor,
                      params: dict[str, Tensor] | None = None, conditioner: TextTagConditioner | None = None) -> Tensor:
    """log pi(response tokens | prefix): (S,P),(S,T) -> (S,T); `params` runs the model functionally.

    With a `conditioner`, the model runs under the preference that each prefix's tags say (the backends
    that read w beyond the tags, e.g. `embedding`, `svd_lora`, need it).
    """
    ids = torch.cat([prefix, responses], 1)
    mask = torch.cat([prefix_mask, torch.ones_like(responses)], 1)  # right padding sits after the targets
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=responses.shape[1] + 1)
    # peft's tied trainable tokens share one ParameterDict between embedding and LM head: swapping it
    # through both names would restore the swapped tensor (torch.func), so swap it once (tie_weights=False).
    # A plain tied model needs tie_weights=True, or the LM head would keep the old weights.
    with conditioned(conditioner, model, prefix):
        out = model(**kwargs) if params is None else torch.func.functional_call(model, params, (), kwargs, tie_weights=not is_peft(model))
    return losses.token_logprobs(out.logits[:, :-1], responses)


def conditioned(conditioner: TextTagConditioner | None, model: PreTrainedModel, prefix: Tensor):
    """The conditioner's preference context for `model` on these tagged prefixes (a no-op without one)."""
    # Backends whose w arrives through the tags alone need no context (no per-pass work on the hot path);
    # untagged prefixes (the unconditioned TRL peer) run without a preference, as the bare prompts of h(x) do.
    if conditioner is None or not conditioner.reads_preference:
        return contextlib.nullcontext()
    if not torch.isin(prefix, conditioner.token_ids.to(prefix.device)).any():
        return contextlib.nullcontext()
    return conditioner.preference(model, conditioner.weights_from_ids(prefix))


def pack(rows: list[tuple[list[int], list[int]]], pad: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(prefix, response) id lists -> left-padded prefixes, their mask, right-padded responses, their mask."""
    p_width, r_width = max(len(p) for p, _ in rows), max(len(r) for _, r in rows)
    prefix = torch.tensor([[pad] * (p_width - len(p)) + p for p, _ in rows], device=device)
    prefix_mask = torch.tensor([[0] * (p_width - len(p)) + [1] * len(p) for p, _ in rows], device=device)
    resp = torch.tensor([r + [pad] * (r_width - len(r)) for _, r in rows], device=device)
    resp_mask = torch.tensor([[True] * len(r) + [False] * (r_width - len(r)) for _, r in rows], device=device)
    return prefix, prefix_mask, resp, resp_mask


def encode_responses(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_new_tokens: int) -> tuple[Tensor, Tensor]:
    """Right-padded response ids ending in EOS, truncated to max_new_tokens (the warm start's targets)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = encode_without_tags(tokenizer, [" " + t for t in texts])
    rows = [ids[: max_new_tokens - 1] + [eos] for ids in encoded]
    width = max(len(r) for r in rows)
    resp = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
    return resp, mask
