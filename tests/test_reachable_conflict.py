"""benchmarks/reachable_conflict.py's statistic: does objective i rise where objective j is worst?"""

import importlib.util
from pathlib import Path

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
