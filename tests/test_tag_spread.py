"""benchmarks/tag_spread.py: the distance between a policy's extreme preference tags, trained and at the start."""

import importlib.util
from pathlib import Path

import pytest
import torch
from test_meta import micro_module

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "tag_spread.py"
_spec = importlib.util.spec_from_file_location("tag_spread", _PATH)
tag_spread = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tag_spread)


def test_spread_rows_hand_values():
    start = torch.zeros(1, 3, 2)
    trained = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [3.0, 4.0]]])  # the extremes 5 apart; moves 0, 1, 5
    ordinary = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    (row,) = tag_spread.spread_rows(["a"], trained, start, ordinary)
    assert row["ends_apart"] == pytest.approx(5.0) and row["ends_apart_at_start"] == 0.0
    assert row["mean_move"] == pytest.approx(2.0) and row["ordinary_tokens_apart"] == 0.0
    (no_start,) = tag_spread.spread_rows(["a"], trained, None, ordinary)
    assert no_start["ends_apart_at_start"] is None and no_start["mean_move"] is None


def test_tag_rows_of_a_lora_policy_follow_its_trainable_tokens():
    module = micro_module("first_order", {"r": 4})
    trained, start, ordinary = tag_rows = tag_spread.tag_rows(module)
    assert trained.shape == start.shape == (2, module.conditioner.resolution + 1, 16)
    assert torch.equal(trained, start)  # untrained: the tag rows are still their start
    delta = next(p for n, p in module.policy.named_parameters() if "trainable_tokens_delta" in n)
    with torch.no_grad():
        delta[0].add_(1.0)  # the first tag row of the first objective moves by sqrt(16)
    rows = tag_spread.spread_rows(["a", "b"], *tag_spread.tag_rows(module))
    assert rows[0]["mean_move"] == pytest.approx(4.0 / trained.shape[1]) and rows[1]["mean_move"] == 0.0
    assert len(ordinary) == int(module.conditioner.token_ids.min()) and tag_rows[2].shape[1] == 16
