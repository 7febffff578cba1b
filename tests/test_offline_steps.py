"""The warm start's optimisation loop: its seeded batch order, and which batches a loss must precompute."""

import torch

from meal_pl.offline_steps import offline_steps, visited_batches


def _drawn(num_batches: int, steps: int, seed: int) -> list[int]:
    layer, drawn = torch.nn.Linear(1, 1), []

    def batch_loss(i: int) -> torch.Tensor:
        drawn.append(i)
        return layer(torch.ones(1)).sum()

    assert len(offline_steps(layer, num_batches, steps, 0.1, batch_loss, seed)) == steps
    return drawn


def test_visited_batches_are_the_ones_the_steps_draw():
    drawn = _drawn(7, 4, seed=3)
    assert len(set(drawn)) == 4 and visited_batches(7, 4, seed=3) == sorted(drawn)
    assert _drawn(7, 4, seed=3) == drawn  # seeded: the same order again
    assert visited_batches(3, 5) == [0, 1, 2] and sorted(set(_drawn(3, 5, seed=0))) == [0, 1, 2]  # cycled past the last
