"""Pareto helpers: grid, dominance, hypervolume, front-quality metrics, plot and report."""

import json
import math

import pytest
import torch
from scipy.stats import spearmanr

from meal_pl.pareto import (
    HypervolumeMetric,
    front_report,
    hypervolume,
    ideal_hypervolume,
    is_steerable,
    mean_inner_product,
    non_dominated_mask,
    plot_front,
    simplex_front_hypervolume,
    simplex_grid,
    spacing,
    sparsity,
    steerability,
    steerability_interval,
)


def test_simplex_grid_two_objectives():
    grid = simplex_grid(2, 11)
    assert grid.shape == (11, 2)
    torch.testing.assert_close(grid[:, 0], torch.linspace(0, 1, 11))
    torch.testing.assert_close(grid.sum(1), torch.ones(11))


@pytest.mark.parametrize(
    ("k", "m", "expected"), [(3, 21, 21), (3, 20, 15), (3, 3, 3), (4, 35, 35), (2, 5, 5)]
)
def test_simplex_grid_rounds_to_lattice(k, m, expected):
    grid = simplex_grid(k, m)
    assert grid.shape == (expected, k)
    torch.testing.assert_close(grid.sum(1), torch.ones(expected))
    assert len({tuple(row) for row in grid.tolist()}) == expected  # all distinct
    assert (grid >= 0).all()


def test_simplex_grid_three_objectives_step_one_fifth():
    grid = simplex_grid(3, 21)
    steps = grid * 5
    torch.testing.assert_close(steps, steps.round())  # every coordinate is a multiple of 1/5


def test_simplex_grid_too_few_points():
    with pytest.raises(ValueError, match="num_points=2"):
        simplex_grid(3, 2)


def test_non_dominated_mask():
    points = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.4, 0.4], [0.0, 1.0], [0.5, 0.2], [0.5, 0.5]])
    # (0.4,0.4) and (0.5,0.2) are dominated by (0.5,0.5); the duplicate (0.5,0.5) is kept.
    assert non_dominated_mask(points).tolist() == [True, True, False, True, False, True]


def test_hypervolume_known_values():
    assert hypervolume(torch.tensor([[1.0, 1.0]]), [0.0, 0.0]) == pytest.approx(1.0)
    assert hypervolume(torch.tensor([[1.0, 0.5], [0.5, 1.0]]), [0.0, 0.0]) == pytest.approx(0.75)
    cube = torch.tensor([[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
    assert hypervolume(cube, [0.0, 0.0, 0.0]) == pytest.approx(8.0)
    assert hypervolume(torch.tensor([[1.0, 1.0]]), [0.5, -1.0]) == pytest.approx(1.0)


def test_hypervolume_ignores_points_not_beating_reference():
    assert hypervolume(torch.tensor([[-1.0, 2.0], [1.0, 0.0]]), [0.0, 0.0]) == 0.0
    assert hypervolume(torch.zeros(0, 2), [0.0, 0.0]) == 0.0
    assert hypervolume(torch.tensor([[1.0, 1.0], [-1.0, 5.0]]), [0.0, 0.0]) == pytest.approx(1.0)


def test_ideal_hypervolume():
    assert ideal_hypervolume(2, 11, [0.0, 0.0]) == pytest.approx(0.45, abs=1e-12)
    assert simplex_front_hypervolume(2) == 0.5
    assert simplex_front_hypervolume(3) == pytest.approx(1 / 6)
    assert ideal_hypervolume(3, 21, [0.0] * 3) < simplex_front_hypervolume(3)


def test_hypervolume_metric_accumulates():
    metric = HypervolumeMetric([0.0, 0.0])
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert metric.compute().item() == 0.0
    metric.update(torch.tensor([[1.0, 0.5]]))
    metric.update(torch.tensor([[0.5, 1.0]]))
    assert metric.compute().item() == pytest.approx(0.75)
    metric.reset()
    metric.update(torch.tensor([[1.0, 1.0]]))
    assert metric.compute().item() == pytest.approx(1.0)


def test_spacing_and_sparsity_hand_values():
    even = torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    assert spacing(even) == pytest.approx(0.0, abs=1e-7)
    assert sparsity(even) == pytest.approx(0.5)  # two gaps of squared length 0.25 + 0.25
    uneven = torch.tensor([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0]])
    nn = torch.tensor([0.1, 0.1, 0.9]) * math.sqrt(2)  # nearest-neighbour distances
    assert spacing(uneven) == pytest.approx(nn.std(correction=0).item(), rel=1e-6)
    assert sparsity(uneven) == pytest.approx((0.02 + 1.62) / 2)
    assert spacing(even[:1]) == 0.0 and sparsity(even[:1]) == 0.0


def test_mean_inner_product():
    w = simplex_grid(2, 11)
    assert mean_inner_product(w, w) == pytest.approx(0.7)  # mean of w0^2 + w1^2 over the grid
    assert mean_inner_product(w, torch.ones(11, 2)) == 0.0  # constant rewards normalise to 0
    assert mean_inner_product(w, w.flip(1)) == pytest.approx(0.3)  # anti-steering scores low


def test_steerability():
    w = simplex_grid(2, 11)
    corr = steerability(w, w * 3 + 1)
    torch.testing.assert_close(corr, torch.ones(2))
    assert is_steerable(corr)
    flat = steerability(w, torch.full((11, 2), 0.3))
    torch.testing.assert_close(flat, torch.zeros(2))  # 0, not NaN
    assert not is_steerable(flat)
    half = steerability(w, torch.stack([w[:, 0], torch.ones(11)], 1))
    assert not is_steerable(half)  # one dead objective is enough to fail


def test_steerability_interval_is_the_spread_over_redrawn_prompts():
    from meal_pl.pareto import _rank_correlations

    torch.manual_seed(0)
    w = simplex_grid(3, 21)  # tied weights within each column: average ranks, as spearmanr
    fronts = torch.rand(5, 21, 3)
    fronts[0, :, 1] = 0.5  # a constant column scores 0, as steerability
    vectorised = torch.from_numpy(_rank_correlations(w.double().numpy(), fronts.double().numpy())).float()
    scipy = torch.tensor([[0.0 if len(set(f[:, k].tolist())) < 2 else spearmanr(w[:, k], f[:, k]).statistic
                           for k in range(3)] for f in fronts]).float()
    torch.testing.assert_close(vectorised, scipy)
    torch.testing.assert_close(torch.stack([steerability(w, f) for f in fronts]), scipy)

    w = simplex_grid(2, 11)
    steered = w[:, None, :] + 0.01 * torch.randn(11, 40, 2)  # (M,P,K): every prompt follows w
    noise = torch.rand(11, 40, 2)  # no prompt does
    tight, wide = steerability_interval(w, steered), steerability_interval(w, noise)
    assert tight.shape == (2, 2) and (tight[:, 0] > 0.9).all()
    assert (wide[:, 0] < 0).all() and (wide[:, 1] > 0).all()  # holds 0: noise is not steering
    assert (tight[:, 0] <= tight[:, 1]).all() and (wide[:, 0] <= wide[:, 1]).all()
    torch.testing.assert_close(steerability_interval(w, noise), wide)  # a fixed seed: the same interval
    steered[3, :5, 0] = float("nan")  # a missing reward is left out of its mean, not propagated
    assert torch.isfinite(steerability_interval(w, steered)).all()


@pytest.mark.parametrize("k", [2, 3])
def test_plot_front_writes_png(tmp_path, k):
    w = simplex_grid(k, 21)
    path = tmp_path / "front.png"
    fig = plot_front(
        w, 0.9 * w, [f"r{i}" for i in range(k)], [0.0] * k, path, extra={"initial": 0.5 * w, "PWN": w[0]}
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == (2 if k == 2 else 4)  # panels + colour bar


def test_front_report_is_json():
    w = simplex_grid(2, 11)
    report = front_report(w, w, ["a", "b"], [0.0, 0.0])
    json.loads(json.dumps(report))
    assert report["hypervolume"] == pytest.approx(0.45)
    assert report["steerable"] is True and set(report["steerability"]) == {"a", "b"}
    assert len(report["points"]) == 11 and all(p["non_dominated"] for p in report["points"])
    assert set(report) == {
        "points",
        "hypervolume",
        "reference_point",
        "spacing",
        "sparsity",
        "mean_inner_product",
        "steerability",
        "steerable",
    }
    per_prompt = w[:, None, :].expand(11, 4, 2)  # (M,P,K): the interval appears only when rewards per prompt are given
    assert front_report(w, w, ["a", "b"], [0.0, 0.0], per_prompt)["steerability_interval"] == {
        "a": pytest.approx([1.0, 1.0]), "b": pytest.approx([1.0, 1.0])}


def test_per_group_summary_hand_values():
    from meal_pl.pareto import per_group_summary

    groups = ["a", None, "b", "a"]
    pwn = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.2, 0.8], [0.6, 0.4]])
    # M=2 preferences x P=4 prompts x K=2
    rewards = torch.tensor([
        [[1.0, 0.0], [9.0, 9.0], [0.5, 0.0], [0.0, 0.0]],
        [[0.0, 1.0], [9.0, 9.0], [0.0, 0.5], [0.0, 0.0]],
    ])
    out = per_group_summary(groups, pwn, rewards, [0.0, 0.0], max_hypervolume=0.5)
    assert set(out) == {"a", "b"}  # prompts without a group are left out
    assert out["a"]["pwn_weights"] == pytest.approx([0.8, 0.2]) and out["a"]["num_prompts"] == 2
    assert out["a"]["front"] == [[0.5, 0.0], [0.0, 0.5]]
    assert out["a"]["hypervolume"] == 0.0  # (0.5, 0) and (0, 0.5) each sit on the reference point's edge
    assert out["b"]["front"] == [[0.5, 0.0], [0.0, 0.5]] and out["b"]["pwn_weights"] == pytest.approx([0.2, 0.8])
    rewards[:, 0] += 0.1  # lift group a's first prompt off the reference edges
    a = per_group_summary(groups, None, rewards, [0.0, 0.0])["a"]
    # front: the mean of (1.1, 0.1) and (0, 0) = (0.55, 0.05), and (0.05, 0.55): two boxes minus their overlap
    assert torch.allclose(torch.tensor(a["front"]), torch.tensor([[0.55, 0.05], [0.05, 0.55]]))
    assert a["hypervolume"] == pytest.approx(2 * 0.55 * 0.05 - 0.05**2) and a["pwn_weights"] is None
    assert per_group_summary([None, None], pwn[:2], None, [0.0, 0.0]) == {}
    with pytest.raises(ValueError, match="pwn_weights has 2 rows"):
        per_group_summary(groups, pwn[:2], None, [0.0, 0.0])


def test_hypervolume_gain_of_an_adaptive_point():
    from meal_pl.pareto import hypervolume_gain

    front = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # HV 0 against (0, 0): each point has a zero side
    assert hypervolume_gain(front, torch.tensor([0.5, 0.5]), [0.0, 0.0]) == pytest.approx(0.25)
    front = torch.tensor([[0.6, 0.6]])
    assert hypervolume_gain(front, torch.tensor([0.5, 0.5]), [0.0, 0.0]) == 0.0  # dominated: adds nothing
    assert hypervolume_gain(front, torch.tensor([0.8, 0.5]), [0.0, 0.0]) == pytest.approx(0.8 * 0.5 - 0.6 * 0.5 + 0.0)
