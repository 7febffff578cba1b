"""Meal's pure loss and selection functions against hand-computed values."""

import math

import pytest
import torch

from meal_pl import losses


def test_dominated_on_a_hand_example():
    r = torch.tensor([[[1.0, 1.0], [0.5, 0.5], [2.0, 0.0], [1.0, 1.0]]])
    # sample 1 is dominated by 0 (and 3); duplicates 0/3 do not dominate each other; 2 is on the front
    assert losses.dominated(r).tolist() == [[False, True, False, False]]
    # an invalid sample dominates nothing
    valid = torch.tensor([[False, True, True, False]])
    assert losses.dominated(r, valid).tolist() == [[False, False, False, False]]


def test_rejection_keeps_scalarised_best_and_drops_dominated():
    w = torch.tensor([[0.9, 0.1]])
    r = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.5, -0.1], [0.9, -0.5]]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    keep = losses.rejection_mask(w, r, valid, drop_dominated=True)
    assert keep.tolist() == [[True, True, False, False]]  # samples 2 and 3 are dominated by sample 0
    assert bool(keep[0, losses.scalarize(w, r).argmax()])


def test_rejection_quantile_and_invalid():
    w = torch.tensor([[0.5, 0.5]])
    r = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.3, 0.3], [2.0, 2.0]]])
    valid = torch.tensor([[True, True, True, False]])
    keep = losses.rejection_mask(w, r, valid, drop_dominated=False, quantile=0.5)
    # scalarised: 0.5, 0.5, 0.3 (valid); median 0.5 -> keep the two 0.5s; the invalid best is never kept
    assert keep.tolist() == [[True, True, False, False]]


def test_selection_weights_hand_values():
    w = torch.tensor([[1.0, 0.0]])
    r = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [3.0, 0.0]]])
    keep = torch.tensor([[True, True, False]])
    a = losses.selection_weights(w, r, keep, tau=1.0)
    e = math.e
    assert torch.allclose(a, torch.tensor([[e / (e + 1), 1 / (e + 1), 0.0]]))
    hard = losses.selection_weights(w, r, keep, tau=0.0)
    assert hard.tolist() == [[1.0, 0.0, 0.0]]
    nothing = losses.selection_weights(w, r, torch.zeros_like(keep), tau=1.0)
    assert nothing.abs().sum() == 0


def test_tchebycheff_prefers_the_balanced_sample_where_linear_takes_an_endpoint():
    w = torch.tensor([[0.5, 0.5]])
    r = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.45, 0.45]]])
    assert losses.scalarize(w, r).argmax().item() in (0, 1)  # linear: 0.5, 0.5, 0.45
    cheb = losses.scalarize(w, r, "tchebycheff")  # ideal (1, 1): -max(w * gap) = -0.5, -0.5, -0.275
    assert torch.allclose(cheb, torch.tensor([[-0.5, -0.5, -0.275]]))
    # at a one-objective preference both rank by that objective alone
    e1 = torch.tensor([[1.0, 0.0]])
    assert torch.equal(losses.scalarize(e1, r).argsort(), losses.scalarize(e1, r, "tchebycheff").argsort())


def test_tchebycheff_ignores_invalid_samples_and_keeps_gradients_finite():
    w = torch.tensor([[0.3, 0.7]], requires_grad=True)
    r = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [float("nan"), 5.0], [9.0, 9.0]]])
    valid = torch.tensor([[True, True, False, False]])
    keep = valid.clone()
    a = losses.selection_weights(w, r, keep, tau=0.5, scalarization="tchebycheff")
    # the ideal point comes from the valid samples only: (1, 1), so the scores are -0.7 and -0.3
    expected = torch.softmax(torch.tensor([-0.7, -0.3]) / 0.5, -1)
    assert torch.allclose(a[0, :2], expected) and a[0, 2:].abs().sum() == 0
    (a[0, 1]).backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="algorithm.sampler.scalarization='chebyshev'"):
        losses.scalarize(w, r, "chebyshev")


def test_tchebycheff_ideal_point_is_the_batchs_best():
    # prompt 0's own samples reach a <= 0.5; prompt 1 shows a = 1 is reachable: at w = (0.5, 0.5) prompt 0's
    # balanced choice is then its highest-a sample, where a per-prompt ideal would call (0.5, 0.5) perfect.
    w = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    r = torch.tensor([[[0.5, 0.5], [0.4, 0.6]], [[1.0, 0.0], [0.0, 1.0]]])
    cheb = losses.scalarize(w, r, "tchebycheff")  # ideal (1, 1)
    assert torch.allclose(cheb, torch.tensor([[-0.25, -0.3], [-0.5, -0.5]]))


def test_front_advantages_under_tchebycheff_leave_invalid_samples_out():
    w = torch.tensor([[0.5, 0.5]])
    r = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [float("nan"), 0.0]]])
    # ideal (1, 0.5): scores -0.25, -0.25 -> advantages 0, 0; the invalid sample gets 0, not a score of its own
    assert losses.front_advantages(r, w, "tchebycheff").tolist() == [[0.0, 0.0, 0.0]]
    r2 = torch.tensor([[[1.0, 0.0], [0.8, 0.5], [float("nan"), 0.0]]])
    # ideal (1, 0.5): scores -0.25, -0.1 -> mean -0.175 -> (-0.075, +0.075, 0)
    assert torch.allclose(losses.front_advantages(r2, w, "tchebycheff"), torch.tensor([[-0.075, 0.075, 0.0]]))


def test_relabel_is_softmax_of_rewards():
    r = torch.tensor([[2.0, 0.0]])
    assert torch.allclose(losses.relabel(r, 1.0), torch.tensor([[math.e**2 / (math.e**2 + 1), 1 / (math.e**2 + 1)]]))


def test_token_logprobs_and_masked_mean():
    logits = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5]]]))
    lp = losses.token_logprobs(logits, torch.tensor([[1, 0]]))
    assert torch.allclose(lp, torch.log(torch.tensor([[0.75, 0.5]])))
    assert torch.allclose(losses.masked_mean(lp, torch.tensor([[True, False]])), torch.log(torch.tensor([0.75])))
    assert losses.masked_mean(lp, torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0


def test_kl_k3_zero_when_equal_and_positive_otherwise():
    lp = torch.tensor([-1.0, -2.0])
    assert torch.allclose(losses.kl_k3(lp, lp), torch.zeros(2))
    ref = torch.tensor([-1.5, -1.0])
    r = ref - lp
    assert torch.allclose(losses.kl_k3(lp, ref), torch.exp(r) - r - 1)
    assert (losses.kl_k3(lp, ref) > 0).all()


def test_inner_loss_hand_value_and_gradient_wrt_selection():
    logp = torch.tensor([[-1.0, -3.0], [-2.0, -2.0]])
    ref = torch.tensor([[-1.0, -3.0], [-1.0, -2.0]])
    mask = torch.tensor([[True, True], [True, False]])
    a = torch.tensor([0.25, 0.75], requires_grad=True)
    loss, nll, kl = losses.inner_loss(logp, ref, mask, a, beta=0.5, num_prompts=2)
    assert torch.allclose(nll, torch.tensor([2.0, 2.0]))
    kl1 = math.exp(1.0) - 1.0 - 1.0  # r = -1 - (-2) = 1 on the one unmasked token
    assert torch.allclose(kl, torch.tensor([0.0, kl1]))
    expected = (0.25 * 2.0 + 0.75 * (2.0 + 0.5 * kl1)) / 2
    assert loss.item() == pytest.approx(expected)
    (ga,) = torch.autograd.grad(loss, a)
    assert torch.allclose(ga, (nll + 0.5 * kl) / 2)  # dL/da_ij = loss_ij / B


def test_outer_loss_and_pwn_surrogate_gradient():
    logp = torch.tensor([[-1.0, -1.0], [-4.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    assert losses.outer_loss(logp, mask).item() == pytest.approx((1.0 + 4.0) / 2)
    sel = torch.tensor([[0.3, 0.7]], requires_grad=True)
    g = torch.tensor([[2.0, -1.0]])
    (grad,) = torch.autograd.grad(losses.pwn_meta_loss(sel, g), sel)
    assert torch.allclose(grad, g)


def test_preference_regression_is_kl():
    target = torch.tensor([[0.5, 0.5]])
    pwn = torch.tensor([[0.9, 0.1]])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert losses.preference_regression(pwn, target).item() == pytest.approx(expected, rel=1e-5)
    assert losses.preference_regression(target, target).item() == pytest.approx(0.0, abs=1e-6)


def test_front_advantages_hand_values_and_invalid_samples():
    w = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    r = torch.tensor([[[1.0, 9.0], [3.0, 0.0]], [[1.0, 1.0], [float("nan"), 0.0]]])
    # prompt 0: scores 1, 3 -> mean 2 -> (-1, 1); prompt 1: one valid sample -> no baseline -> zeros
    assert losses.front_advantages(r, w).tolist() == [[-1.0, 1.0], [0.0, 0.0]]


def test_front_outer_loss_hand_value_and_gradient():
    # M=1 prompt, J=2 samples, T=2 tokens; sample 1 has only its first token in the response.
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -7.0]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    w = torch.tensor([[0.25, 0.75]])
    r = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # scores 0.25, 0.75 -> advantages -0.25, +0.25
    loss = losses.front_outer_loss(logp, mask, r, w)
    # -(1/(M*J)) * (-0.25 * (-3) + 0.25 * (-0.5)) = -(0.75 - 0.125) / 2
    assert loss.item() == pytest.approx(-0.3125)
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(g, torch.tensor([[0.125, 0.125], [-0.125, 0.0]]))
    # sign: a descent step raises the above-mean sample's log-prob and lowers the below-mean one's
    assert (-g[1, 0]) > 0 and (-g[0]).lt(0).all()


def test_front_outer_loss_zero_gradient_for_equal_scalarised_rewards():
    logp = torch.randn(4, 3, requires_grad=True)
    mask = torch.ones(4, 3, dtype=torch.bool)
    w = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    # different reward vectors, equal scalarisation inside each group
    r = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.3, 0.0], [0.3, 5.0]]])
    loss = losses.front_outer_loss(logp, mask, r, w)
    (g,) = torch.autograd.grad(loss, logp)
    assert loss.item() == 0.0 and g.abs().max() == 0


def test_front_outer_loss_scale_does_not_grow_with_samples():
    mask = torch.ones(2, 1, dtype=torch.bool)
    w = torch.tensor([[1.0, 0.0]])
    pair = losses.front_outer_loss(torch.tensor([[-1.0], [-2.0]]), mask, torch.tensor([[[0.0, 0], [1.0, 0]]]), w)
    # the same pair of samples repeated twice (J=4): same loss
    quad = losses.front_outer_loss(
        torch.tensor([[-1.0], [-2.0], [-1.0], [-2.0]]),
        torch.ones(4, 1, dtype=torch.bool),
        torch.tensor([[[0.0, 0], [1.0, 0], [0.0, 0], [1.0, 0]]]),
        w,
    )
    assert pair.item() == pytest.approx(quad.item()) and pair.item() != 0


def test_front_outer_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(M\*J,T\)"):
        losses.front_outer_loss(torch.zeros(3, 2), torch.ones(3, 2), torch.zeros(1, 2, 2), torch.ones(1, 2))


def test_grid_assignment_cycles_the_grid():
    grid = torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    assigned = losses.grid_assignment(5, grid)
    assert assigned.tolist() == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    # fewer prompts than grid points: the offset rotates, so consecutive steps cover the grid
    used = {tuple(row) for step in range(3) for row in losses.grid_assignment(2, grid, offset=2 * step).tolist()}
    assert used == {tuple(row) for row in grid.tolist()}
    with pytest.raises(ValueError, match="num_prompts"):
        losses.grid_assignment(0, grid)


def test_shortfall_compares_prompts_at_the_same_preference():
    # Pairs of prompts at w_a = 1, 0, 0.5 whose pair means lie on a line (0.5 each): the fit is that line, and the
    # residuals on a are +-0.3, +-0.1, +-0.2; on b (rewards 1 - a) their negatives. Centred ranks in [-1, 1].
    weights = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    a = torch.tensor([0.8, 0.2, 0.6, 0.4, 0.7, 0.3])
    rewards = torch.stack([a, 1 - a], -1)[:, None, :].expand(6, 2, 2).clone()
    valid = torch.ones(6, 2, dtype=torch.bool)
    valid[1, 1] = False  # an invalid sample is left out of its prompt's mean
    rewards[1, 1] = torch.tensor([-50.0, 50.0])
    e = losses.shortfall(rewards, valid, weights)
    expected = torch.tensor([1.0, -1.0, 0.2, -0.2, 0.6, -0.6])  # ranks 5, 0, 3, 2, 4, 1 of 0..5
    torch.testing.assert_close(e, torch.stack([expected, -expected], -1))


def test_shortfall_needs_more_prompts_than_objectives_and_skips_prompts_without_a_valid_sample():
    weights = torch.rand(5, 2).softmax(-1)
    assert losses.shortfall(torch.rand(2, 3, 2), torch.ones(2, 3, dtype=torch.bool), weights[:2]).abs().sum() == 0
    valid = torch.ones(5, 3, dtype=torch.bool)
    valid[0] = False
    e = losses.shortfall(torch.rand(5, 3, 2), valid, weights)
    assert e[0].abs().sum() == 0 and e[1:].abs().sum() > 0


def test_dpo_sft_loss_adds_the_chosen_answers_per_token_nll():
    from meal_pl.losses import dpo_loss, dpo_sft_loss

    pc, pr, rc, rr = torch.tensor([-4.0, -6.0]), torch.tensor([-8.0, -5.0]), torch.tensor([-5.0, -5.0]), torch.tensor([-5.0, -5.0])
    tokens = torch.tensor([2.0, 3.0])
    dpo = dpo_loss(pc, pr, rc, rr, 0.1)
    assert torch.equal(dpo_sft_loss(pc, pr, rc, rr, 0.1, tokens, 0.0), dpo)
    # per-token NLL of the chosen answers: 4/2 and 6/3, mean 2.0; half of it added
    torch.testing.assert_close(dpo_sft_loss(pc, pr, rc, rr, 0.1, tokens, 0.5), dpo + 1.0)
