"""meal_pl/inference.py: writing the tag rows in changes no token and leaves the policy as it was; the head input hook;
adapters without the float32 round trip under autocast (meal_pl/precision.py)."""

from __future__ import annotations

import pytest
import torch
from test_decode import CORPUS, conditioner

from meal_pl.decode import decode
from meal_pl.inference import contiguous_head_input, token_rows_written_in, trainable_token_layers
from meal_pl.models import apply_lora, tiny_llama
from meal_pl.precision import CastOutsideAutocast, hold_frozen_in_bf16

pytestmark = pytest.mark.usefixtures("one_thread")


def lora_policy():
    """A tiny tied-embedding policy with tags and LoRA whose adapters and tag rows are not at their start."""
    cond = conditioner("tags")
    model, tok = tiny_llama(CORPUS, vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    cond.attach(tok, model)
    model = apply_lora(model, cond.token_ids.flatten().tolist(), r=2)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(3)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    ids = torch.cat([torch.randint(3, 250, (3, 6)), cond.token_ids[:, [4, 16]].T.repeat(2, 1)[:3]], 1)
    return model.eval(), tok, ids


def table(model):
    return model.get_input_embeddings().token_adapter.base_layer.weight


def test_rows_written_in_give_peft_logits_and_the_table_comes_back():
    model, _, ids = lora_policy()
    layers = trainable_token_layers(model)
    assert len(layers) == 2  # the embedding and the tied head
    before, original = model(ids).logits, table(model).clone()
    with token_rows_written_in(model):
        assert trainable_token_layers(model) == []  # read as merged: no table copy per forward
        inside = model(ids).logits
        assert not torch.equal(table(model), original)  # the tag rows are in the table itself
    assert torch.equal(inside, before)
    assert torch.equal(table(model), original)
    assert trainable_token_layers(model) == layers
    with model.disable_adapter():  # pi_ref of a LoRA policy: the base, tag rows as they were
        assert torch.equal(model.get_input_embeddings()(ids), torch.nn.functional.embedding(ids, original))
    with pytest.raises(RuntimeError), token_rows_written_in(model):
        raise RuntimeError("a failed generation")
    assert torch.equal(table(model), original) and trainable_token_layers(model) == layers


def test_training_after_the_block_still_reaches_the_tag_rows():
    model, _, ids = lora_policy()
    with token_rows_written_in(model):
        model(ids)
    model.train()
    model(ids).logits.square().mean().backward()
    deltas = [layer.trainable_tokens_delta["default"] for layer in trainable_token_layers(model)]
    assert deltas[0].grad is not None and deltas[0].grad.abs().sum() > 0


@pytest.mark.parametrize("bf16", [False, True])
def test_decoding_gives_the_same_tokens(bf16):
    model, tok, ids = lora_policy()
    mask = torch.ones_like(ids)

    def sample(ctx):
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), ctx:
            return decode(model, ids, mask, 12, tok.pad_token_id, tok.eos_token_id, temperature=0.7, top_p=0.9,
                          num_return_sequences=2)

    plain = sample(torch.no_grad())
    contiguous_head_input(model)
    assert torch.equal(sample(token_rows_written_in(model)), plain)


def test_head_input_made_contiguous_in_bf16_only():
    head = torch.nn.Linear(64, 1000, bias=False)
    model = type("M", (), {"get_output_embeddings": lambda self: head})()
    contiguous_head_input(model)
    contiguous_head_input(model)  # installed once
    assert len(head._forward_pre_hooks) == 1
    seen = []
    head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    strided = torch.randn(4, 9, 64)[:, -1:, :]
    float32 = head(strided)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = head(strided)
    assert seen == [False, True]  # float32 keeps its (there faster) batched product; bf16 gets one product
    assert torch.equal(float32, torch.nn.functional.linear(strided, head.weight))
    torch.testing.assert_close(bf16.float(), float32, atol=0.05, rtol=0.02)


def _loss_and_grads(model, ids):
    """Under bf16 autocast with the frozen weights in bfloat16: the logits' sum and every adapter's gradient."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids).logits
    logits.float().sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_adapters_skip_the_float32_round_trip_under_autocast_with_the_same_values_and_gradients():
    model, _, ids = lora_policy()
    hold_frozen_in_bf16(model)
    model.train()
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert layers and all(isinstance(m.cast_input_dtype_enabled, CastOutsideAutocast) for m in layers)  # apply_lora set it
    casts = []
    original_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        out = original_to(self, *args, **kwargs)
        if out.dtype != self.dtype:
            casts.append(out.dtype)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.Tensor, "to", counting_to)
        logits, grads = _loss_and_grads(model, ids)
        skipped = len(casts)
        for layer in layers:  # peft's own behaviour: cast the input to the adapters' float32 first
            layer.cast_input_dtype_enabled = True
        casts.clear()
        peft_logits, peft_grads = _loss_and_grads(model, ids)
    assert skipped < len(casts)  # the round trip is gone
    assert torch.equal(logits, peft_logits)
    assert grads.keys() == peft_grads.keys() and all(torch.equal(grads[n], peft_grads[n]) for n in grads)
    assert all(g.dtype == torch.float32 for g in grads.values())  # the adapters and their gradients stay float32


def test_outside_autocast_adapters_cast_their_input_as_peft_does():
    model, _, ids = lora_policy()
    layer = next(m for m in model.modules() if hasattr(m, "lora_A") and len(m.lora_A))
    x = torch.randn(2, 3, layer.in_features, dtype=torch.bfloat16)
    assert layer.cast_input_dtype_enabled and layer._cast_input_dtype(x, torch.float32).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not layer.cast_input_dtype_enabled and layer._cast_input_dtype(x, torch.float32) is x
