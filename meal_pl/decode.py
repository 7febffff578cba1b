"""A lean KV-cached decode loop: token for token what `model.generate` returns for RejectionSampler's arguments.

On the small CPU policies meal-pl trains, HF generate's per-call set-up and per-step bookkeeping (logits
processors and stopping criteria, `inspect.signature` on every processor every step, kwargs dictionaries,
input slicing and cloning, a growing attention mask) are a fifth of generation time or more. This loop keeps
only the work: the same model forward calls (same input ids, position ids, 2D attention mask, DynamicCache,
`logits_to_keep=1`), the same logits processing in the same order, the same `torch.multinomial` (or argmax) on
the same tensor each step, finished rows filled with padding, and the same early stop. So under one torch RNG
state the tokens and the RNG state left behind are HF's, and nothing downstream (rewards, selection,
hypervolumes) can tell them apart. The model's forward and the sampling draw itself are left as they are:
they are most of the time, and changing them (batch shapes, kernels) could change the last bits.

What it replicates is transformers' `GenerationMixin.generate` -> `_prefill` / `_sample` for a decoder-only
model with `do_sample`, `temperature`, `top_k`, `top_p`, `min_new_tokens`, `suppress_tokens`,
`num_return_sequences`, `pad_token_id`, `eos_token_id`, `use_cache=True` (checked against HF by
tests/test_decode.py). `unsupported` names whatever it does not replicate; the caller then uses HF generate.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch
from torch import Tensor
from transformers import DynamicCache, GenerationConfig, GenerationMixin

# Generation methods whose base behaviour the loop copies: a model class that overrides any of them decodes
# its own way, so it goes to HF generate.
_COPIED = ("generate", "_sample", "_prefill", "prepare_inputs_for_generation", "_update_model_kwargs_for_generation",
           "_prepare_position_ids_for_generation", "_expand_inputs_for_generation", "_prepare_cache_for_generation")
# Entries of a model's generation_config that cannot change what the loop does: the special tokens and lengths
# are passed explicitly (pad/eos, max/min_new_tokens, num_return_sequences), the sampling knobs too when
# sampling (and greedy ignores them); beam-search settings do nothing at num_beams=1. Others may be set to
# the value at which HF adds nothing (`_NOOP`). Any other entry (a repetition_penalty, no_repeat_ngram_size,
# bad_words_ids, a cache_implementation, ...) would add processing HF does and the loop does not: such a
# model goes to HF generate.
_NEUTRAL = {"pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "_from_model_config",
            "transformers_version", "do_sample", "temperature", "top_k", "top_p", "max_length", "max_new_tokens",
            "min_length", "min_new_tokens", "num_return_sequences", "use_cache", "length_penalty", "early_stopping"}
_NOOP = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
         "encoder_no_repeat_ngram_size": 0, "num_beams": 1, "num_beam_groups": 1, "diversity_penalty": 0.0,
         "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "guidance_scale": 1.0, "renormalize_logits": False,
         "remove_invalid_values": False, "token_healing": False, "output_attentions": False,
         "output_hidden_states": False, "output_scores": False, "output_logits": False, "return_dict_in_generate": False}
_DEFAULTS = GenerationConfig().to_dict()


def hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model HF generate runs the forward of: peft's generate delegates to its base model."""
    return model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "active_peft_config") else model


def unsupported(model: torch.nn.Module, input_ids: Tensor, synced_gpus: bool = False) -> str | None:
    """Why the loop cannot stand in for `model.generate` here, or None when it reproduces it exactly."""
    if synced_gpus:
        return "synced_gpus=True (sharded weights decode in lockstep across ranks)"
    if hasattr(model, "active_peft_config"):
        peft = model.active_peft_config
        if peft.is_prompt_learning or peft.peft_type == "POLY" or getattr(peft, "alora_invocation_tokens", None):
            return f"peft {peft.peft_type} adapters change the generation inputs"
    inner = hf_model(model)
    if (reason := _class_reason(type(inner))) is not None:
        return reason
    if inner.config.is_encoder_decoder:
        return "encoder-decoder model"
    if inner.device.type == "mps":
        return "mps device (HF defers its stop check by one step there)"
    experts = getattr(inner, "get_experts_implementation", dict)()
    if inner.device.type != "cpu" and "grouped_mm" in experts.values():
        return "mixture-of-experts off the CPU (HF switches its experts to batched_mm while decoding)"
    if inner.is_remote_code():
        return f"{type(inner).__name__} is remote code"
    if input_ids.device != inner.device or getattr(inner, "hf_device_map", None):
        return "inputs and model on different devices"
    if len(getattr(inner.config, "_get_generation_parameters", list)()) > 0:
        return "generation parameters set on model.config (HF generate refuses them)"
    odd = [key for key, value in model.generation_config.to_dict().items()
           if key not in _NEUTRAL and value != _DEFAULTS.get(key) and not (key in _NOOP and value == _NOOP[key])]
    if odd:
        return f"model.generation_config sets {odd}"
    return None


@functools.cache
def _class_reason(cls: type) -> str | None:
    """The class-level part of `unsupported` (the same for every instance, so computed once per class)."""
    if not issubclass(cls, GenerationMixin):
        return f"{cls.__name__} is not a transformers generation model"
    overridden = [name for name in _COPIED if getattr(cls, name, None) is not getattr(GenerationMixin, name)]
    if overridden or not cls._supports_default_dynamic_cache():
        return f"{cls.__name__} has its own generation code ({', '.join(overridden) or 'its own cache'})"
    parameters = inspect.signature(cls.forward).parameters
    if "attention_mask" not in parameters or "position_ids" not in parameters:
        return f"{cls.__name__}.forward takes no attention_mask or position_ids"
    return None


def position_ids(mask: Tensor) -> Tensor:
    """Positions that skip left padding, as `_prepare_position_ids_for_generation` computes them."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def decode(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    max_new_tokens: int,
    pad_token_id: int,
    eos_token_id: int | list[int],
    min_new_tokens: int = 0,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    suppress_tokens: list[int] | None = None,
) -> Tensor:
    """(B,P) left-padded prompts -> (B*n, T) new tokens, T <= max_new_tokens: `generate(...)[:, P:]`.

    Rows are prompt-major (each prompt's n samples together, as generate's repeat_interleave). A row that ended
    (EOS) gets pad tokens; decoding stops at max_new_tokens or when every row has ended.
    """
    if not do_sample and num_return_sequences > 1:  # as generate refuses it
        raise ValueError(f"greedy decoding gives one response per prompt, not num_return_sequences={num_return_sequences}")
    # inference_mode rather than generate's no_grad: the same kernels on the same tensors, with less per-op
    # bookkeeping (no version counters). The tokens are cloned out of it so training may use them.
    with torch.inference_mode():
        tokens = _decode(hf_model(model), input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id,
                         min_new_tokens, do_sample, temperature, top_k, top_p, num_return_sequences, suppress_tokens)
    return tokens.clone()


def _decode(model, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, min_new_tokens, do_sample,
            temperature, top_k, top_p, n, suppress_tokens) -> Tensor:
    device, width = input_ids.device, input_ids.shape[1]
    # generate: positions from the mask, then an all-ones mask is dropped (no padding: the model builds the
    # plain causal mask), then every tensor is repeated n times per row.
    positions = position_ids(attention_mask)
    padded = not bool((attention_mask == 1).all())
    ids = input_ids.repeat_interleave(n, 0) if n > 1 else input_ids
    positions = positions.repeat_interleave(n, 0) if n > 1 else positions
    rows = ids.shape[0]
    mask = None
    if padded:  # generate grows the 2D mask by a column of ones per step; here its columns are filled once
        mask = attention_mask.new_ones((rows, width + max_new_tokens))
        mask[:, :width] = attention_mask.repeat_interleave(n, 0) if n > 1 else attention_mask
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    extra = {"logits_to_keep": 1} if model._supports_logits_to_keep() else {}

    def forward(step_ids: Tensor, step_positions: Tensor, length: int) -> Tensor:
        inputs = {"input_ids": step_ids, "cache": cache, "position_ids": step_positions}
        if mask is not None:
            inputs["attention_mask"] = mask[:, :length]
        return model(**inputs, **extra, use_cache=True, return_dict=True).logits

    # Logits processing, in HF's order. MinNewTokens (EOS barred before min_new_tokens new tokens; generate
    # also adds a MinLength processor with the same effect) and SuppressTokens set -inf, which a later
    # temperature leaves at -inf: so both are one masked_fill, before the temperature.
    suppress = torch.tensor(list(suppress_tokens or []), dtype=torch.long, device=device)
    early = late = None  # the masks need the logits' width (the LM head may be wider than the tokenizer)
    temperature = float(temperature) if do_sample and temperature is not None and temperature != 1.0 else None
    top_k = int(top_k) if do_sample and top_k else 0
    top_p = float(top_p) if do_sample and top_p is not None and top_p < 1.0 else None

    tokens = torch.empty(rows, max_new_tokens, dtype=torch.long, device=device)
    unfinished = torch.ones(rows, dtype=torch.bool, device=device)
    pad = torch.tensor(pad_token_id, dtype=torch.long, device=device)
    logits = forward(ids, positions, width)  # prefill: the whole prompt, logits of its last position only
    step = 0
    while True:
        # generate copies the last logits to float32; every step below is out of place, so a view does
        scores = logits[:, -1].float()
        if early is None:
            vocab = torch.arange(scores.shape[-1], device=device)
            late = torch.isin(vocab, suppress) if len(suppress) else None
            ends = torch.as_tensor(eos_token_id, device=device).reshape(-1)  # every end token (a chat model's several)
            early = torch.isin(vocab, ends) if late is None else torch.isin(vocab, ends) | late
        banned = early if step < min_new_tokens else late
        if banned is not None:
            scores = scores.masked_fill(banned, -math.inf)
        if temperature is not None:  # TemperatureLogitsWarper: a division, not a product with 1/t
            scores = scores / temperature
        if top_k:  # TopKLogitsWarper
            kth = torch.topk(scores, min(top_k, scores.shape[-1]))[0][..., -1, None]
            scores = scores.masked_fill(scores < kth, -math.inf)
        if top_p is not None:  # TopPLogitsWarper
            sorted_logits, sorted_indices = torch.sort(scores, descending=False)
            remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
            remove[..., -1:] = 0
            scores = scores.masked_fill(remove.scatter(1, sorted_indices, remove), -math.inf)
        if do_sample:
            next_tokens = torch.multinomial(torch.nn.functional.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            next_tokens = torch.argmax(scores, dim=-1)
        next_tokens = torch.where(unfinished, next_tokens, pad)  # rows that ended get padding
        tokens[:, step] = next_tokens
        step += 1
        unfinished &= ~torch.isin(next_tokens, ends)
        # generate stops at max_length or once no row is unfinished (a host sync per step, as there)
        if step == max_new_tokens or not bool(unfinished.any()):
            return tokens[:, :step]
        positions = positions[:, -1:] + 1
        logits = forward(next_tokens[:, None], positions, width + step)
