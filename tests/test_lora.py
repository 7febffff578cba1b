"""LoRA through peft: trainable parameters, pi_ref as the base with adapters off (no copy), the warm-start fold."""

import copy
import functools

import pytest
import torch
from test_meta import micro_module

from meal_pl.models import fold_lora


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_trains_adapters_and_tag_rows_only_and_keeps_one_copy():
    full, lora = micro_module("first_order"), micro_module("first_order", {"r": 4})
    assert full.ref is not None and lora.ref is None
    trainable = [n for n, p in lora.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    # The tag rows train (their embeddings are new): one delta row per tag token.
    delta = next(p for n, p in lora.policy.named_parameters() if "trainable_tokens_delta" in n)
    assert delta.shape[0] == lora.conditioner.token_ids.numel()
    # No frozen copy: the LoRA module holds the base weights once (plus small adapters), the full one twice.
    policy_numel = sum(p.numel() for p in full.policy.parameters())
    assert sum(p.numel() for p in full.parameters()) > 1.9 * policy_numel
    assert sum(p.numel() for p in lora.parameters()) < 1.5 * policy_numel


def test_lora_reference_is_the_base_with_adapters_disabled():
    module = micro_module("first_order", {"r": 4})  # adapters moved off identity: policy != base
    ids = torch.randint(3, 200, (2, 6))
    base = copy.deepcopy(module.policy).unload()  # the frozen base weights, adapters removed
    with module.reference() as ref:
        ref_logits = logits(ref, ids)
    assert torch.allclose(ref_logits, logits(base, ids))
    assert not torch.allclose(logits(module.policy, ids), ref_logits)
    assert module.policy.training == module.training  # the context restores the mode it found


def test_fold_lora_keeps_the_policy_and_makes_it_the_reference():
    module = micro_module("first_order", {"r": 4})
    delta = next(p for n, p in module.policy.named_parameters() if "trainable_tokens_delta" in n)
    with torch.no_grad():
        delta.add_(0.3)  # as if the warm start had trained the tag rows
    tags = module.conditioner.token_ids[:, :3].flatten()
    ids = torch.cat([torch.randint(3, 200, (2, 4)), tags.expand(2, -1)], 1)
    before = logits(module.policy, ids)
    fold_lora(module.policy)
    assert torch.allclose(logits(module.policy, ids), before, atol=1e-10)
    with module.reference() as ref:  # after the warm start pi_ref is the warmed-up policy, as without LoRA
        assert torch.allclose(logits(ref, ids), before, atol=1e-10)
    b = [p for n, p in module.policy.named_parameters() if "lora_B" in n]
    assert b and all(not p.any() for p in b)


def test_tag_lr_scale_gives_the_tag_rows_their_own_learning_rate():
    from meal_pl.module import checked_tag_lr_scale, policy_param_groups

    module = micro_module("first_order", {"r": 4})
    delta = next(p for n, p in module.policy.named_parameters() if "trainable_tokens_delta" in n)
    groups = policy_param_groups(module.policy, 30.0)
    assert [len(g["params"]) for g in groups][1] == 1 and groups[1]["params"][0] is delta
    assert len(groups[0]["params"]) + 1 == sum(p.requires_grad for p in module.policy.parameters())
    assert policy_param_groups(module.policy, 1.0) == [p for p in module.policy.parameters() if p.requires_grad]
    module.tag_lr_scale = 30.0
    module.policy_optimizer = functools.partial(torch.optim.AdamW, lr=1e-3)
    (opt,), _ = module.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 3e-3])  # the first of 10 warm-up steps
    full = micro_module("first_order")  # full fine-tuning: the tag rows train inside the whole embedding
    with pytest.raises(ValueError, match=r"algorithm.tag_lr_scale=30.0 scales .* has none .*model.lora.r=8"):
        checked_tag_lr_scale(30.0, full.policy)
    with pytest.raises(ValueError, match=r"algorithm.tag_lr_scale=0 must be a finite number > 0"):
        checked_tag_lr_scale(0, module.policy)
    assert checked_tag_lr_scale(1, full.policy) == 1.0
