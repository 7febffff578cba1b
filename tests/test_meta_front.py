"""outer=front: its meta gradient matches a finite difference; it trains, with the meta step every n steps."""

import pytest
import torch
from test_meta import fixed_batch, logprobs, micro_module

from meal_pl import losses, meta
from meal_pl.rollout import FrontBatch, concat_rollouts, select_prompts
from meal_pl.train import build_run


def front_batch(module) -> FrontBatch:
    """Two held-out prompts under the grid's two corners, two fixed responses each, fixed rewards."""
    torch.manual_seed(2)
    M, J, K = 2, 2, 2
    _, _, inner, _ = fixed_batch(module)
    prefix, prefix_mask = inner["prefix"][[0, 0, 3, 3]], inner["prefix_mask"][[0, 0, 3, 3]]
    responses = torch.randint(3, 200, (M * J, 4))
    return FrontBatch(prefix, prefix_mask, responses, torch.ones_like(responses, dtype=torch.bool),
                      torch.randn(M, J, K, dtype=torch.double), torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.double))


def front_after_lookahead(module, features, rewards, inner, front) -> torch.Tensor:
    """L_out^front(theta - alpha grad L_in(theta; a(w_phi))) computed directly, as a function of phi."""
    B, N, _ = rewards.shape
    a = losses.selection_weights(module.pwn(features), rewards, torch.ones(B, N, dtype=torch.bool), module.sampler.tau).flatten()
    params = {n: p for n, p in module.policy.named_parameters() if p.requires_grad}
    logp = logprobs(params, module.policy, inner["prefix"], inner["prefix_mask"], inner["responses"])
    loss, _, _ = losses.inner_loss(logp, inner["ref_logp"], inner["resp_mask"], a, module.beta, B)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    fast = {n: p - module.meta.inner_lr * g for (n, p), g in zip(params.items(), grads)}
    return meta.front_outer(module.policy, front)(fast)


def test_front_meta_gradient_matches_finite_difference():
    module = micro_module("second_order")
    features, rewards, inner, _ = fixed_batch(module)
    front = front_batch(module)
    B, N, _ = rewards.shape
    keep = torch.ones(B, N, dtype=torch.bool)
    selection = losses.selection_weights(module.pwn(features), rewards, keep, module.sampler.tau).detach()
    meta_grad, _ = meta.meta_gradient(module.policy, inner, meta.front_outer(module.policy, front), selection,
                                      "second_order", module.meta.inner_lr, module.beta)
    sel = losses.selection_weights(module.pwn(features), rewards, keep, module.sampler.tau)
    grads = torch.autograd.grad(losses.pwn_meta_loss(sel, meta_grad), list(module.pwn.parameters()))
    direction = [torch.randn_like(g) for g in grads]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    eps, values = 1e-3, []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(module.pwn.parameters(), direction):
                p.add_(sign * eps * d)
        values.append(front_after_lookahead(module, features, rewards, inner, front).item())
        with torch.no_grad():
            for p, d in zip(module.pwn.parameters(), direction):
                p.sub_(sign * eps * d)
    numeric = (values[0] - values[1]) / (2 * eps)
    assert abs(analytic.item()) > 1e-8
    assert analytic.item() == pytest.approx(numeric, rel=1e-3, abs=1e-9)


def test_concat_and_select_rollouts_keep_each_prompts_samples(tiny_cfg):
    cfg = tiny_cfg("objective=synthetic", "logger=none", "warm_start.steps=0")
    datamodule, module, trainer = build_run(cfg)
    trainer.fit(module, datamodule=datamodule)  # a real rollout to take apart
    callback = next(cb for cb in trainer.callbacks if hasattr(cb, "rollout") and callable(cb.rollout))
    a = callback.rollout(module, datamodule.train_prompts[:4])
    b = callback.rollout(module, datamodule.train_prompts[4:7])
    both = concat_rollouts([a, b], module.tokenizer.pad_token_id)
    assert both.shape[0] == 7 and both.prefix.shape[0] == 7 * both.shape[1]
    picked = select_prompts(both, torch.tensor([1, 5]))
    N = both.shape[1]
    assert picked.prompts == [a.prompts[1], b.prompts[1]]
    assert torch.equal(picked.rewards[1], b.rewards[1])
    got = picked.responses[N : 2 * N][:, : b.responses.shape[1]]
    assert torch.equal(got, b.responses[N : 2 * N])  # right padding only adds columns after the response


def test_front_outer_trains_with_the_meta_step_every_two_steps(tiny_cfg):
    cfg = tiny_cfg("objective=synthetic", "logger=none", "warm_start.steps=0", "trainer.max_steps=4",
                   "algorithm.meta.lookahead=second_order", "algorithm.meta.outer=front", "algorithm.meta.every_n_steps=2", "algorithm.meta.exploration=0",
                   "algorithm.meta.front_prompts=3")
    datamodule, module, trainer = build_run(cfg)
    before = [p.detach().clone() for p in module.pwn.parameters()]
    gathered, calls = [], []
    original_gathered, original_gradient = module.gathered, meta.meta_gradient

    def spy_gathered(batch_size):
        gathered.append(len(module.pending))
        r = original_gathered(batch_size)
        assert r.front is not None and r.front.rewards.shape[:2] == (3, 2)  # M=3 prompts, J=2 samples
        return r

    def spy_gradient(*args, **kwargs):
        calls.append(args[3].shape[0])  # prompts in the meta step's selection
        return original_gradient(*args, **kwargs)

    module.gathered, meta.meta_gradient = spy_gathered, spy_gradient
    try:
        trainer.fit(module, datamodule=datamodule)
    finally:
        meta.meta_gradient = original_gradient
    assert gathered == [2, 2]  # steps 2 and 4, each on the two rollouts since the last
    assert calls and all(c == cfg.data.batch_size for c in calls)  # one batch's worth of the 2 x B prompts
    assert any(not torch.equal(p, q) for p, q in zip(before, module.pwn.parameters()))
    assert module.pending == []
