"""benchmarks/reachable_conflict.py's statistic: does objective i rise where objective j is worst?"""

import importlib.util
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "reachable_conflict.py"
_spec = importlib.util.spec_from_file_location("reachable_conflict", _PATH)
reachable_conflict = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reachable_conflict)


def test_quartile_means_tell_a_trade_off_from_independent_objectives():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4000, generator=g)
    conflict = reachable_conflict.quartile_means(torch.stack([a, 1 - a], 1))
    low, high = conflict[0][1]  # objective 0 where objective 1 is worst / best
    assert low > 0.85 and high < 0.15
    independent = reachable_conflict.quartile_means(torch.stack([a, torch.rand(4000, generator=g)], 1))
    low, high = independent[0][1]
    assert abs(low - high) < 0.05


def test_conflict_drops_invalid_rows_and_names_the_objectives():
    rewards = torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [float("nan"), 0.2]])
    stats = reachable_conflict.conflict(rewards, ["x", "y"])
    assert stats["responses"] == 3 and abs(stats["correlation"][0][1] + 1.0) < 1e-6
    assert set(stats["quartile_means"]) == {"x", "y"} and set(stats["quartile_means"]["x"]) == {"y"}


def test_within_prompt_conflict_removes_what_differs_between_prompts():
    # Two prompts, one easier on both objectives: across prompts the rewards rise together (+1), but among each
    # prompt's own answers one rises as the other falls (-1).
    rewards = torch.tensor([[0.0, 1.0], [1.0, 0.0], [10.0, 11.0], [11.0, 10.0]])
    prompt_ids = torch.tensor([0, 0, 1, 1])
    assert torch.corrcoef(rewards.T)[0, 1] > 0.9
    centred = reachable_conflict.within_prompt(rewards, prompt_ids)
    assert torch.corrcoef(centred.T)[0, 1] == pytest.approx(-1.0)


def test_policy_conflicts_per_group_follow_the_answers_layout():
    # (M=1, samples=2 x P=2, K=2), sample-major: rows are (s0 p0, s0 p1, s1 p0, s1 p1).
    rewards = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]])
    report = reachable_conflict.policy_conflicts(rewards, ["a", "b"], {"a": "red_team", "b": "everyday"}, ["x", "y"])
    assert report["groups"]["red_team"]["all"]["correlation"][0][1] == pytest.approx(-1.0)  # rows 0 and 2
    assert report["groups"]["everyday"]["all"]["correlation"][0][1] == pytest.approx(1.0)  # rows 1 and 3
    assert report["all"]["responses"] == 4 and report["within_prompt"]["responses"] == 4
