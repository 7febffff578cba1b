"""The preference-weight-net and the static preference sources."""

import pytest
import torch

from meal_pl.pwn import (
    FixedPreferences,
    GroupPreferences,
    PreferenceWeightNet,
    UniformPreferences,
    dirichlet_at,
)


def test_pwn_outputs_lie_on_the_simplex_and_respond_to_the_prompt():
    torch.manual_seed(0)
    pwn = PreferenceWeightNet(feature_dim=16, num_objectives=3, hidden_dim=8)
    torch.nn.init.normal_(pwn.mlp[-1].weight)  # leave the uniform init so the output depends on features
    feats = torch.randn(5, 16)
    w = pwn(feats)
    assert w.shape == (5, 3)
    assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(5))
    assert (w[0] - w[1]).abs().sum() > 1e-3  # different prompts -> different preferences
    w.sum(0)[0].backward()
    assert pwn.mlp[1].weight.grad.abs().sum() > 0


def test_pwn_starts_uniform():
    w = PreferenceWeightNet(feature_dim=4, num_objectives=2)(torch.randn(3, 4))
    assert torch.allclose(w, torch.full((3, 2), 0.5))


def test_static_sources():
    u = UniformPreferences(4, 3)(torch.zeros(1000, 4))
    assert torch.allclose(u.sum(-1), torch.ones(1000)) and (u.mean(0) - 1 / 3).abs().max() < 0.05
    f = FixedPreferences(4, 2, [0.8, 0.2])(torch.zeros(3, 4))
    assert torch.allclose(f, torch.tensor([[0.8, 0.2]] * 3))
    with pytest.raises(ValueError, match="pwn.weights"):
        FixedPreferences(4, 2, [0.8, 0.8])


def test_group_source_draws_around_each_groups_mean():
    """pwn=group: a prompt of a named group draws around that group's mean (the PWN's dirichlet proposal there);
    a prompt of another group, or of none, draws around the uniform mean."""
    torch.manual_seed(0)
    source = GroupPreferences(4, 2, {"b": [1.0, 0.0], "a": [0.0, 1.0]})
    codes = source.codes(["a"] * 3000 + ["b"] * 3000 + [None] * 3000 + ["c"] * 3000)
    assert codes[:3000].eq(0).all() and codes[3000:6000].eq(1).all() and codes[6000:].eq(-1).all()
    w = source(codes)
    assert torch.allclose(w.sum(-1), torch.ones(len(w)))
    means = w[:, 0].view(4, 3000).mean(-1)  # alpha = 0.5 + 1 * mean: (0.5, 1.5) -> E[w_0] = 0.25
    assert torch.allclose(means, torch.tensor([0.25, 0.75, 0.5, 0.5]), atol=0.02)
    assert (w[:3000, 0] > 0.8).float().mean() > 0.02  # the floor keeps the far end covered


def test_group_source_refuses_bad_settings_in_one_line():
    with pytest.raises(ValueError, match="algorithm.pwn.means is empty"):
        GroupPreferences(4, 2, {})
    with pytest.raises(ValueError, match=r"algorithm.pwn.means.a=\[0.7,0.7\] sums to"):
        GroupPreferences(4, 2, {"a": [0.7, 0.7]})
    with pytest.raises(ValueError, match=r"names groups \['x'\].*their groups: \['a', 'b'\]"):
        GroupPreferences(4, 2, {"x": [0.5, 0.5]}).codes(["a", "b"])


def test_dirichlet_at_has_rsample_gradient():
    """The re-expressed draw carries exactly the implicit reparameterisation gradient of rsample."""
    alpha = torch.tensor([[0.7, 1.9], [2.5, 0.6]], requires_grad=True)
    torch.manual_seed(0)
    x = torch.distributions.Dirichlet(alpha).rsample()
    direction = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    (expected,) = torch.autograd.grad((x * direction).sum(), alpha)
    again = dirichlet_at(alpha, x.detach())
    (got,) = torch.autograd.grad((again * direction).sum(), alpha)
    assert torch.equal(again, x.detach()) and expected.abs().sum() > 0
    assert torch.allclose(got, expected)


def test_dirichlet_proposal_keeps_every_prompt_spread_over_the_simplex():
    """Even where the PWN is saturated at one corner, a prompt's training preferences cover the simplex."""
    pwn = PreferenceWeightNet(feature_dim=4, num_objectives=2, proposal="dirichlet")
    corner = torch.tensor([[1.0, 0.0]]).expand(4000, 2)
    draws = pwn.sample(corner)[:, 0]
    assert (pwn.alpha(corner) >= pwn.floor).all()
    assert draws.mean() > 0.6  # the PWN moves the mean ...
    assert (draws < 0.25).float().mean() > 0.02 and (draws > 0.9).float().mean() > 0.1  # ... but not the support
    uniform = pwn.sample(torch.full((4000, 2), 0.5))[:, 0]
    assert abs(float(uniform.mean()) - 0.5) < 0.03 and (uniform < 0.1).float().mean() > 0.05  # Dirichlet(1) there
    point = PreferenceWeightNet(feature_dim=4, num_objectives=2, proposal="point")
    assert torch.equal(point.sample(corner), corner)


def test_dirichlet_proposal_refuses_a_floor_that_leaves_no_room():
    with pytest.raises(ValueError, match="algorithm.pwn.floor"):
        PreferenceWeightNet(feature_dim=4, num_objectives=2, proposal="dirichlet", floor=1.0)
    with pytest.raises(ValueError, match="algorithm.pwn.proposal"):
        PreferenceWeightNet(feature_dim=4, num_objectives=2, proposal="gaussian")
