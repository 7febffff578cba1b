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


def test_backend_moves_measure_the_svd_adapters_change_from_their_start():
    from test_conditioning import build

    _, model, _, _ = build("svd_lora")
    rows = {r["parameter"]: r for r in tag_spread.backend_moves(model)}
    assert set(rows) == {"svd_u", "svd_v", "svd_sigma", "svd_scale"}
    assert all(r["max_change"] == 0.0 for r in rows.values()) and rows["svd_scale"]["mean"] == pytest.approx(0.1)
    layer = next(m for m in model.modules() if hasattr(m, "svd_scale"))
    with torch.no_grad():
        layer.svd_scale[0] += 0.5  # one entry of one layer's preference scales
    moved = {r["parameter"]: r for r in tag_spread.backend_moves(model)}["svd_scale"]
    scales = [m.frozen_svd_scale for m in model.modules() if hasattr(m, "frozen_svd_scale")]
    assert moved["max_change"] == pytest.approx(0.5)
    assert moved["relative_change"] == pytest.approx(0.5 / torch.cat(scales).norm().item())
    assert tag_spread.backend_moves(build("tags")[1]) == []
