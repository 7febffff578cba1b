"""Generation and rejection sampling: N responses per conditioned prompt, then which ones to learn from."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from meal_pl import decode, losses
from meal_pl.chat import format_prompts
from meal_pl.escaping import encode_without_tags
from meal_pl.ranges import check_number

DECODERS = ("loop", "hf")
_log = logging.getLogger("meal_pl")
_fallbacks_noted: set[str] = set()


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_length: int, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor, int]:
    """Left-padded (B,P) ids and mask; prompts over max_length keep their end (the request being answered).

    Returns (ids, mask, number of prompts truncated) so the caller can count and warn. A model with
    `model.chat_template: true` reads each prompt through its chat template (meal_pl.chat). A tag string typed into
    a prompt stays text (meal_pl.escaping): only the conditioner places tag ids.
    """
    rows = encode_without_tags(tokenizer, format_prompts(tokenizer, prompts))
    truncated = sum(len(r) > max_length for r in rows)
    rows = [r[-max_length:] for r in rows]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=device)
    return ids, mask, truncated


def position_ids(mask: Tensor) -> Tensor:
    """Positions that skip left padding, the same rule transformers' generate uses."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def end_token_ids(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module | None = None) -> list[int]:
    """Every token that ends an answer: the tokenizer's EOS and the model's generation config's (a chat model can have
    several: Qwen2.5's <|im_end|> and <|endoftext|>, Llama 3's <|eot_id|> and <|end_of_text|>)."""
    ids = [tokenizer.eos_token_id]
    config = getattr(model, "generation_config", None)
    configured = getattr(config, "eos_token_id", None)
    ids += configured if isinstance(configured, (list, tuple)) else [configured]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def response_mask(responses: Tensor, eos_token_id: int | list[int]) -> Tensor:
    """(S,T) mask of real response tokens: everything up to and including the first end token (any of them)."""
    is_eos = torch.isin(responses, torch.as_tensor(eos_token_id, device=responses.device).reshape(-1))
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return ~after_eos


@dataclass
class RejectionSampler:
    """METHOD.md steps 3-5: how many samples, how they are drawn, which are kept and how they are weighted."""

    num_samples: int = 4
    max_new_tokens: int = 24
    min_new_tokens: int = 0  # EOS is blocked before this many tokens: empty answers otherwise win on harmlessness
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    tau: float = 0.5  # selection temperature; 0 = hard best-of-N
    drop_dominated: bool = True
    quantile: float = 0.0  # reject samples below this per-prompt quantile of the scalarised reward
    relabel: bool = False  # train on tags of the achieved trade-off (True) or of the requested one
    relabel_tau: float = 0.5
    scalarization: str = "tchebycheff"  # the score selection ranks samples by: tchebycheff | linear (losses.scalarize)
    # loop: meal_pl/decode.py, HF generate's tokens for the same RNG state, faster; HF generate where the
    # loop does not apply (decode.unsupported: synced_gpus, models with their own generation code, ...). hf: always HF.
    decoder: str = "loop"

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"algorithm.sampler.decoder={self.decoder!r}; choose one of {DECODERS}")
        if self.num_samples < 1:
            raise ValueError(f"algorithm.sampler.num_samples={self.num_samples} must be >= 1 (N, the responses sampled per prompt)")
        if self.max_new_tokens < 1:  # first: a bad min_new_tokens message would otherwise name the wrong key
            raise ValueError(f"algorithm.sampler.max_new_tokens={self.max_new_tokens} must be >= 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"algorithm.sampler.min_new_tokens={self.min_new_tokens} must be in [0, "
                             f"algorithm.sampler.max_new_tokens={self.max_new_tokens}]")
        if not 0 <= self.quantile < 1:
            raise ValueError(f"algorithm.sampler.quantile={self.quantile} must be in [0, 1)")
        if self.scalarization not in losses.SCALARIZATIONS:
            raise ValueError(f"algorithm.sampler.scalarization={self.scalarization!r}; choose one of {losses.SCALARIZATIONS}")
        check_number("algorithm.sampler.tau", self.tau, note=" (0: hard best-of-N)")
        check_number("algorithm.sampler.relabel_tau", self.relabel_tau, strict=True)
        if self.temperature <= 0:
            raise ValueError(f"algorithm.sampler.temperature={self.temperature} must be > 0")
        self.temperature = float(self.temperature)  # HF's temperature warper refuses an int (temperature=2)
        if self.top_k < 0:
            raise ValueError(f"algorithm.sampler.top_k={self.top_k} must be >= 0 (0 = no top-k filter)")
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"algorithm.sampler.top_p={self.top_p} must be in [0, 1] (1 = no nucleus filter)")

    @torch.no_grad()
    def generate(
        self,
        model: PreTrainedModel,
        input_ids: Tensor,
        attention_mask: Tensor,
        pad_token_id: int,
        eos_token_id: int | list[int],
        num_samples: int | None = None,
        greedy: bool = False,
        suppress_ids: list[int] | None = None,
        synced_gpus: bool = False,
    ) -> Tensor:
        """Batched KV-cached sampling: (B,P) conditioned prompts -> (B*n, T) responses, padded after EOS."""
        n = self.num_samples if num_samples is None else num_samples
        width = input_ids.shape[1]
        if self.decoder == "loop":
            reason = decode.unsupported(model, input_ids, synced_gpus)
            if reason is None:
                responses = decode.decode(
                    model, input_ids, attention_mask, self.max_new_tokens, pad_token_id, eos_token_id,
                    min_new_tokens=self.min_new_tokens, do_sample=not greedy, temperature=self.temperature,
                    top_k=self.top_k, top_p=self.top_p, num_return_sequences=n, suppress_tokens=suppress_ids,
                )
                return responses.masked_fill(~response_mask(responses, eos_token_id), pad_token_id)
            if reason not in _fallbacks_noted:
                _fallbacks_noted.add(reason)
                _log.info("algorithm.sampler.decoder=loop: HF generate decodes instead, %s", reason)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else self.temperature,
            top_k=None if greedy else self.top_k,
            top_p=None if greedy else self.top_p,
            num_return_sequences=n,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            use_cache=True,
            suppress_tokens=suppress_ids or None,
            synced_gpus=synced_gpus,
        )
        responses = out[:, width:]
        return responses.masked_fill(~response_mask(responses, eos_token_id), pad_token_id)

    def select(self, weights: Tensor, rewards: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """(keep mask, selection weights a_ij(w)) for normalised rewards (B,N,K); gradients flow through w."""
        keep = losses.rejection_mask(weights.detach(), rewards, valid, self.drop_dominated, self.quantile, self.scalarization)
        return keep, losses.selection_weights(weights, rewards, keep, self.tau, self.scalarization)


@torch.no_grad()
def generate_eval_mode(sampler: RejectionSampler, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                       prefix: Tensor, prefix_mask: Tensor, suppress_ids: list[int], greedy: bool = False,
                       num_samples: int | None = None, synced_gpus: bool = False, end_ids: list[int] | None = None) -> Tensor:
    """`sampler.generate` with the policy in eval mode (no dropout), never emitting `suppress_ids` (the
    preference tags), padding or BOS, ending at any of `end_ids` (default: end_token_ids); the policy's mode is
    restored afterwards."""
    suppress = suppressed_ids(tokenizer, suppress_ids, end_ids)
    end_ids = end_ids or end_token_ids(tokenizer, policy)
    was_training = policy.training
    policy.eval()
    try:
        return sampler.generate(policy, prefix, prefix_mask, tokenizer.pad_token_id, end_ids,
                                num_samples=num_samples, greedy=greedy, suppress_ids=suppress, synced_gpus=synced_gpus)
    finally:
        policy.train(was_training)


def suppressed_ids(tokenizer: PreTrainedTokenizerBase, tag_ids: list[int], end_ids: list[int] | None = None) -> list[int]:
    """Token ids a response must never contain: the preference tags, padding and BOS (the end tokens stay allowed)."""
    ids = list(tag_ids)
    ends = set(end_ids or [tokenizer.eos_token_id])
    for special in (tokenizer.pad_token_id, tokenizer.bos_token_id):
        if special is not None and special not in ends:
            ids.append(special)
    return ids
