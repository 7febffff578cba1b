"""The meta step: every lookahead mode gives a PWN gradient; second_order matches a finite difference."""

import pytest
import torch

from meal_pl import losses, meta
from meal_pl.meta import MetaConfig
from meal_pl.models import tiny_llama
from meal_pl.module import MealModule
from meal_pl.pwn import PreferenceWeightNet
from meal_pl.rewards import RewardSet
from meal_pl.sampling import RejectionSampler, encode_prompts
from meal_pl.sequences import pack, sequence_logprobs

CORPUS = [f"\n\nHuman: question {i} about bread?\n\nAssistant: answer {i} with flour and water." for i in range(30)]


def logprobs(params, model, prefix, prefix_mask, responses):
    return sequence_logprobs(model, prefix, prefix_mask, responses, params)


def meta_gradient_of(module: MealModule, inner, meta_rows, selection, prompts=None):
    """meal_pl.meta.meta_gradient with the module's policy and settings."""
    batch = pack(meta_rows, module.tokenizer.pad_token_id)
    return meta.meta_gradient(module.policy, inner, meta.nll_outer(module.policy, batch), selection, module.meta.lookahead, module.meta.inner_lr,
                              module.beta, prompts)


def micro_module(lookahead: str, lora: dict | None = None, attention: str = "eager") -> MealModule:
    torch.manual_seed(0)
    policy, tok = tiny_llama(CORPUS, vocab_size=260, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                             attn_implementation=attention)
    rewards = RewardSet({"a": lambda p, c: [len(x) % 5 for x in c], "b": lambda p, c: [len(x) % 3 for x in c]})
    module = MealModule(
        policy, tok, rewards, {"reference_point": [0, 0]},
        pwn=lambda **kw: PreferenceWeightNet(hidden_dim=8, **kw),
        sampler=RejectionSampler(num_samples=3, max_new_tokens=5, tau=1.0, drop_dominated=False),
        meta=MetaConfig(lookahead=lookahead, inner_lr=0.5),
        policy_optimizer=torch.optim.SGD, pwn_optimizer=torch.optim.SGD, beta=0.1, lora=lora,
    )
    torch.nn.init.normal_(module.pwn.mlp[-1].weight, std=0.5)
    if lora:  # move the adapters off their identity init (B = 0), so the lookahead sees a generic point
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.2)
    return module.double()


def fixed_batch(module: MealModule):
    """Prompts, sampled responses and rewards, fixed so only the PWN's weights vary."""
    torch.manual_seed(1)
    tok, B, N, K = module.tokenizer, 2, 3, 2
    ids, mask, _ = encode_prompts(tok, CORPUS[:B], 32)
    features = module.prompt_features(ids, mask)
    responses = torch.randint(3, 200, (B * N, 4))
    resp_mask = torch.ones_like(responses, dtype=torch.bool)
    rewards = torch.randn(B, N, K, dtype=torch.double)
    tags = module.conditioner.tag_ids(losses.relabel(rewards, 0.5).reshape(B * N, K))
    prefix = torch.cat([ids.repeat_interleave(N, 0), tags], 1)
    prefix_mask = torch.cat([mask.repeat_interleave(N, 0), torch.ones_like(tags)], 1)
    with torch.no_grad(), module.reference() as ref:
        ref_logp = logprobs(None, ref, prefix, prefix_mask, responses)
    inner = dict(prefix=prefix, prefix_mask=prefix_mask, responses=responses, resp_mask=resp_mask, ref_logp=ref_logp)
    meta_rows = [(prefix[i].tolist(), responses[i, :3].tolist()) for i in (0, 4)]
    return features, rewards, inner, meta_rows


def outer_after_lookahead(module, features, rewards, inner, meta_rows) -> torch.Tensor:
    """L_out(theta - alpha grad L_in(theta; a(w_phi))) computed directly, as a function of phi."""
    B, N, _ = rewards.shape
    keep = torch.ones(B, N, dtype=torch.bool)
    a = losses.selection_weights(module.pwn(features), rewards, keep, module.sampler.tau).flatten()
    params = {n: p for n, p in module.policy.named_parameters() if p.requires_grad}
    logp = logprobs(params, module.policy, inner["prefix"], inner["prefix_mask"], inner["responses"])
    loss, _, _ = losses.inner_loss(logp, inner["ref_logp"], inner["resp_mask"], a, module.beta, B)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    fast = {n: p - module.meta.inner_lr * g for (n, p), g in zip(params.items(), grads)}
    m_prefix, m_mask, m_resp, m_resp_mask = pack(meta_rows, module.tokenizer.pad_token_id)
    return losses.outer_loss(logprobs(fast, module.policy, m_prefix, m_mask, m_resp), m_resp_mask)


def pwn_gradient(module, features, rewards, inner, meta_rows) -> list[torch.Tensor]:
    """The PWN gradient meal-pl's meta step produces (surrogate sum_ij dL/da_ij * a_ij(w_phi))."""
    B, N, _ = rewards.shape
    keep = torch.ones(B, N, dtype=torch.bool)
    selection = losses.selection_weights(module.pwn(features), rewards, keep, module.sampler.tau).detach()
    meta_grad, _ = meta_gradient_of(module, inner, meta_rows, selection)
    sel = losses.selection_weights(module.pwn(features), rewards, keep, module.sampler.tau)
    return torch.autograd.grad(losses.pwn_meta_loss(sel, meta_grad), list(module.pwn.parameters()))


@pytest.mark.parametrize("lora", [None, {"r": 4}], ids=["full", "lora"])
def test_second_order_matches_finite_difference(lora):
    """The exact meta gradient, also over LoRA adapters and tag rows only (frozen base weights)."""
    module = micro_module("second_order", lora)
    batch = fixed_batch(module)
    grads = pwn_gradient(module, *batch)
    direction = [torch.randn_like(g) for g in grads]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    # Llama's RMSNorm and rotary embeddings compute in float32 even in a float64 model, so the finite
    # difference is limited to ~1e-4 relative precision; eps=1e-3 balances that against truncation error.
    eps = 1e-3
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(module.pwn.parameters(), direction):
                p.add_(sign * eps * d)
        values.append(outer_after_lookahead(module, *batch).item())
        with torch.no_grad():
            for p, d in zip(module.pwn.parameters(), direction):
                p.sub_(sign * eps * d)
    numeric = (values[0] - values[1]) / (2 * eps)
    assert abs(analytic.item()) > 1e-8, "the meta gradient must not vanish"
    assert analytic.item() == pytest.approx(numeric, rel=1e-3, abs=1e-9)


def test_first_order_approximates_second_order():
    exact = micro_module("second_order")
    approx = micro_module("first_order")
    approx.load_state_dict(exact.state_dict())
    batch = fixed_batch(exact)
    B, N, _ = batch[1].shape
    sel = torch.full((B, N), 1 / N, dtype=torch.double)
    g_exact, _ = meta_gradient_of(exact, batch[2], batch[3], sel)
    g_first, _ = meta_gradient_of(approx, batch[2], batch[3], sel)
    assert g_first.abs().sum() > 0
    cosine = torch.nn.functional.cosine_similarity(g_exact.flatten(), g_first.flatten(), dim=0)
    assert cosine > 0.9  # small alpha: the first-order term dominates


@pytest.mark.parametrize("lora", [None, {"r": 4}], ids=["full", "lora"])
@pytest.mark.parametrize("lookahead", ["second_order", "first_order"])
def test_lookahead_modes_give_nonzero_pwn_gradient(lookahead, lora):
    module = micro_module(lookahead, lora)
    grads = pwn_gradient(module, *fixed_batch(module))
    assert sum(g.abs().sum() for g in grads) > 0
    # torch.func swaps parameters in and out; none may stay a functorch wrapper (it breaks .cpu(), saving).
    assert not any(torch._C._functorch.is_functorch_wrapped_tensor(p) for _, p in module.named_parameters(remove_duplicate=False))


@pytest.mark.parametrize("lookahead", ["second_order", "first_order"])
def test_lookaheads_run_through_sdpa_attention_with_eager_attentions_gradient(lookahead):
    """sdpa's fused CPU kernel has no forward-mode derivative (llama2_7b's config uses sdpa); the jvp takes its math path."""
    eager, sdpa = micro_module(lookahead, {"r": 4}), micro_module(lookahead, {"r": 4}, attention="sdpa")
    sdpa.load_state_dict(eager.state_dict())
    assert sdpa.policy.config._attn_implementation == "sdpa"
    g_eager, g_sdpa = pwn_gradient(eager, *fixed_batch(eager)), pwn_gradient(sdpa, *fixed_batch(sdpa))
    assert sum(g.abs().sum() for g in g_sdpa) > 0
    # Llama's RMSNorm computes in float32 inside the float64 micro model: the two kernels agree to ~1e-6.
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5 * a.abs().max()) for a, b in zip(g_eager, g_sdpa, strict=True))


def test_alternating_mode_gives_nonzero_pwn_gradient():
    module = micro_module("alternating")
    features, rewards, _, _ = fixed_batch(module)
    B, N, _ = rewards.shape
    valid = torch.ones(B, N, dtype=torch.bool)
    nd = valid & ~losses.dominated(rewards, valid)
    sel = losses.selection_weights(module.pwn(features), rewards, valid, module.sampler.tau)
    (grad,) = torch.autograd.grad(losses.pwn_meta_loss(sel, -nd.double() / B), [module.pwn.mlp[-1].weight])
    assert grad.abs().sum() > 0


def test_shortfall_target_moves_each_prompt_group_to_the_objective_it_falls_short_on():
    # Two prompt groups at the same preferences: group 0's responses score lower on objective b, group 1's on a.
    torch.manual_seed(0)
    pwn = PreferenceWeightNet(feature_dim=4, num_objectives=2, hidden_dim=8)
    features = torch.cat([torch.randn(8, 4) + 2, torch.randn(8, 4) - 2])
    weights = torch.distributions.Dirichlet(torch.ones(2)).sample((16,))
    lean = torch.tensor([0.2, -0.2]).repeat_interleave(8)[:, None, None]
    rewards = weights[:, None, :] + torch.stack([lean, -lean], -1).squeeze(-2).expand(16, 3, 2) + 0.01 * torch.randn(16, 3, 2)
    buffer = [(features, weights, rewards, torch.ones(16, 3, dtype=torch.bool), torch.ones(16, 3, dtype=torch.bool))]
    opt = torch.optim.Adam(pwn.parameters(), lr=1e-2)
    for _ in range(30):
        features, surrogate, direct = meta.alternating_batch(buffer, "cpu", pwn, 0.5, "shortfall")
        meta.pwn_step(pwn, opt, features, surrogate, MetaConfig(lookahead="alternating", outer="shortfall"), 1.0, direct)
    w = pwn(features)
    assert w[:8, 1].mean() > 0.6 and w[8:, 0].mean() > 0.6  # more weight where each group falls short


def test_each_lookahead_gets_its_own_outer_objective_and_refuses_the_other():
    assert (MetaConfig().lookahead, MetaConfig().outer) == ("alternating", "shortfall")
    assert MetaConfig(lookahead="second_order").outer == MetaConfig(lookahead="first_order").outer == "front"
    assert MetaConfig(lookahead="alternating", outer="nondominated_nll").outer == "nondominated_nll"
    with pytest.raises(ValueError, match="outer=shortfall takes no lookahead.*lookahead=alternating"):
        MetaConfig(lookahead="second_order", outer="shortfall")
    with pytest.raises(ValueError, match="outer=front differentiates through a lookahead.*second_order or first_order"):
        MetaConfig(lookahead="alternating", outer="front")


def test_shortfall_step_does_not_drift_prompts_alike_on_skewed_rewards():
    # Objective b: most prompts slightly above the fit, a few far below (a harmlessness score near 1 with rare
    # drops). Ranked, the shortfall is symmetric: the PWN's mean weight must not move (standardised residuals
    # with per-prompt normalised steps moved it to 0.47 here, most prompts voting alike).
    torch.manual_seed(0)
    pwn = PreferenceWeightNet(feature_dim=4, num_objectives=2, hidden_dim=8)
    features, weights = torch.randn(40, 4), torch.full((40, 2), 0.5)
    b = torch.full((40,), 0.1)
    b[:4] = -0.9  # 10% far below, 90% a little above
    rewards = torch.stack([0.01 * torch.randn(40), b], -1)[:, None, :].expand(40, 2, 2)
    e = losses.shortfall(rewards, torch.ones(40, 2, dtype=torch.bool), weights)
    assert e[:4, 1].max() < e[4:, 1].min() and (e[:, 1] > 0).float().mean() == 0.5  # ranks: symmetric, outliers lowest
    opt = torch.optim.SGD(pwn.parameters(), lr=0.1)
    for _ in range(5):
        meta.pwn_step(pwn, opt, features, meta.shortfall_surrogate(e), MetaConfig(outer="shortfall"), 10.0, e)
    before = PreferenceWeightNet(feature_dim=4, num_objectives=2, hidden_dim=8)(features)
    assert torch.allclose(before, torch.full_like(before, 0.5))
    after = pwn(features)
    assert abs(float(after[:, 1].mean()) - 0.5) < 0.01  # no common drift
    assert after[:4, 1].mean() > after[4:, 1].mean()  # the prompts that fall short on b get more weight on b
