"""Two copies a real model's passes do not need, measured on SmolLM2-135M + LoRA (docs/hardware.md).

- peft's trainable token rows (the preference tags' embeddings) are rebuilt into a copy of the whole embedding
  table on every forward (`index_copy`), once for the embedding and once for the tied LM head: 66 copies of a
  49,152 x 576 table to decode 32 tokens. `token_rows_written_in` writes the rows into the table once for a block
  without gradients (generation) and puts the table back after; the forward reads the same values, bit for bit.
- A pass that keeps the logits of some positions only (`logits_to_keep`: the decode's last position, the
  response of a scored sequence) hands the LM head a strided slice of the hidden states, which `torch.matmul`
  cannot fold into one matrix product: it copies the head's weight once per row (B x 576 x 49,152) for a batched
  product. `contiguous_head_input` hands the head a contiguous input instead, in bfloat16 only: there it is faster
  (forward, backward and reference pass of a SmolLM2 step, one thread: 5.4 s against 6.6 s), while in float32 MKL's
  batched product is the faster one (11.2 s against 13.7 s) and every float32 figure on record rests on it. In
  bfloat16 the two products give the same bits for one position per row (the decode) and may differ in the last
  bits for several (measured: a SmolLM2 run's KL at its first step, 3e-9 before and 0 after).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def trainable_token_layers(model: nn.Module) -> list[nn.Module]:
    """peft's TrainableTokensLayer modules whose adapter is active and not merged (none without peft)."""
    try:
        from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, TrainableTokensLayer)
            and not m.merged and not m.disable_adapters and m.active_adapters]


@contextlib.contextmanager
def token_rows_written_in(model: nn.Module) -> Iterator[None]:
    """Within the block, the trainable token rows sit in the embedding (and tied head) weights themselves.

    For inference only (no gradient reaches the rows' parameters). The original rows are put back on exit, so
    pi_ref (the base with adapters disabled) is unchanged; a tied head shares the table and restores in order.
    Not peft's own merge/unmerge: unmerge writes back the rows peft saved when it wrapped the model, which
    `models.fold_lora` has replaced since (after a warm start the base holds the warmed-up rows).
    """
    layers = trainable_token_layers(model)
    saved = []  # (weight, index, rows before the write), restored last-first
    with torch.no_grad():
        for layer in layers:
            weight = layer.base_layer.weight
            for name in layer.active_adapters:
                index = torch.tensor(layer.token_indices[name], device=weight.device)
                saved.append((weight, index, weight.index_select(0, index)))
                weight.index_copy_(0, index, layer.trainable_tokens_delta[name].to(weight))
            layer.merged_adapters = list(layer.active_adapters)  # its forward now reads the base weight as is
    try:
        yield
    finally:
        with torch.no_grad():
            for layer in layers:
                layer.merged_adapters = []
            for weight, index, rows in reversed(saved):
                weight.index_copy_(0, index, rows)


def _contiguous_in_bf16(module: nn.Module, args: tuple) -> tuple | None:
    x = args[0] if args else None
    if x is None or x.is_contiguous():
        return None
    if x.dtype == torch.bfloat16 or torch.is_autocast_enabled(x.device.type):
        return (x.contiguous(), *args[1:])
    return None


def contiguous_head_input(model: nn.Module) -> None:
    """A forward pre-hook on the output embedding (LM head) that makes a strided bfloat16 input contiguous."""
    head = model.get_output_embeddings()
    if head is not None and _contiguous_in_bf16 not in head._forward_pre_hooks.values():
        head.register_forward_pre_hook(_contiguous_in_bf16)
