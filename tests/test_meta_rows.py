"""The meta step computes only the entries that can move the PWN, and those exactly as on the full batch."""

import pytest
import torch
from test_meta import fixed_batch, logprobs, meta_gradient_of, micro_module

from meal_pl import losses
from meal_pl.sequences import pack


def full_batch_meta_gradient(module, inner, meta_rows, selection):
    """dL_out/da_ij on every sample, without skipping any (the reference)."""
    B, N = selection.shape
    params = dict(module.policy.named_parameters())
    a = selection.flatten().clone().requires_grad_(True)
    logp = logprobs(params, module.policy, inner["prefix"], inner["prefix_mask"], inner["responses"])
    _, nll, kl = losses.inner_loss(logp, inner["ref_logp"], inner["resp_mask"], a, module.beta, B)
    per_sample = nll + module.beta * kl
    m_prefix, m_mask, m_resp, m_resp_mask = pack(meta_rows, module.tokenizer.pad_token_id)
    alpha = module.meta.inner_lr
    if module.meta.lookahead == "second_order":
        grads = torch.autograd.grad((a * per_sample).sum() / B, list(params.values()), create_graph=True)
        fast = {n: p - alpha * g for (n, p), g in zip(params.items(), grads)}
        l_out = losses.outer_loss(logprobs(fast, module.policy, m_prefix, m_mask, m_resp), m_resp_mask)
        return torch.autograd.grad(l_out, a)[0].view(B, N)
    l_out = losses.outer_loss(logprobs(params, module.policy, m_prefix, m_mask, m_resp), m_resp_mask)
    g_out = torch.autograd.grad(l_out, list(params.values()))
    rows = [torch.autograd.grad(per_sample[i], list(params.values()), retain_graph=True) for i in range(B * N)]
    align = torch.stack([sum((g * h).sum() for g, h in zip(row, g_out)) for row in rows])
    return (-alpha * align / B).view(B, N)


@pytest.mark.parametrize("lookahead", ["second_order", "first_order"])
def test_skipped_entries_are_exactly_those_that_cannot_move_the_pwn(lookahead):
    module = micro_module(lookahead)
    _, _, inner, meta_rows = fixed_batch(module)
    selection = torch.tensor([[0.7, 0.0, 0.3], [0.2, 0.5, 0.3]], dtype=torch.double)  # one sample rejected
    prompts = torch.tensor([True, False])  # first_order: the second prompt's gradient is not needed
    fast, _ = meta_gradient_of(module, inner, meta_rows, selection, prompts)
    reference = full_batch_meta_gradient(module, inner, meta_rows, selection)
    needed = selection > 0
    if lookahead == "first_order":
        needed &= prompts[:, None]
    assert torch.allclose(fast[needed], reference[needed], rtol=1e-6, atol=1e-10)
    assert (fast[~needed] == 0).all() and fast[needed].abs().min() > 0


def test_buffer_rows_keeps_the_real_tokens_of_non_dominated_non_empty_samples():
    """Hand-made rollout: row 1 is dominated, row 2 is non-dominated but empty; padding is dropped both sides."""
    from meal_pl.meta import buffer_rows

    prefix = torch.tensor([[0, 5, 6], [0, 0, 7], [8, 9, 10], [0, 11, 12]])
    prefix_mask = torch.tensor([[0, 1, 1], [0, 0, 1], [1, 1, 1], [0, 1, 1]])
    responses = torch.tensor([[1, 2, 0], [3, 0, 0], [0, 0, 0], [4, 4, 4]])
    resp_mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False], [True, True, True]])
    non_dominated = torch.tensor([[True, False], [True, True]])  # (B,N) = (2,2)
    rows = buffer_rows(prefix, prefix_mask, responses, resp_mask, non_dominated)
    assert rows == [([5, 6], [1, 2]), ([11, 12], [4, 4, 4])]
    assert all(isinstance(t, int) for p, y in rows for t in p + y)
    assert buffer_rows(prefix, prefix_mask, responses, resp_mask, torch.zeros(2, 2, dtype=torch.bool)) == []
