"""The rollout is a callback: swapped by config alone, required at start, and the module trains on what it hands over."""

import pytest
import torch
from omegaconf import open_dict

from meal_pl.callbacks.rejection_sampling import RejectionSampling
from meal_pl.train import build_run, train


class HardBestOfN(RejectionSampling):
    """A user's rollout: Meal's samples, but only each prompt's scalarised best is trained on."""

    def __init__(self) -> None:
        self.selections: list[torch.Tensor] = []

    def rollout(self, module, prompts):
        r = super().rollout(module, prompts)
        scores = (r.rewards * r.weights[:, None, :]).sum(-1).masked_fill(~r.keep, float("-inf"))
        r.selection = torch.nn.functional.one_hot(scores.argmax(-1), r.selection.shape[1]).to(r.selection.dtype)
        self.selections.append(r.selection)
        return r


def test_a_rollout_callback_from_config_replaces_rejection_sampling(tiny_cfg):
    cfg = tiny_cfg("objective=synthetic", "logger=none", "algorithm.warm_start_steps=0",
                   "callbacks.rejection_sampling._target_=test_rollout.HardBestOfN", "trainer.max_steps=2")
    datamodule, module, trainer = build_run(cfg)
    custom = [cb for cb in trainer.callbacks if isinstance(cb, HardBestOfN)]
    assert len(custom) == 1
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2 and len(custom[0].selections) == 2
    for selection in custom[0].selections:  # the module trained on the user's rule: one sample per prompt
        assert torch.equal(selection.sum(-1), torch.ones(selection.shape[0]))
    assert module.rollout is None  # consumed by the step


def test_a_run_without_rollout_callback_fails_at_start_naming_the_key(tiny_cfg):
    cfg = tiny_cfg("objective=synthetic", "logger=none", "~callbacks.rejection_sampling")
    with open_dict(cfg):
        cfg.callbacks.pop("rejection_sampling", None)
    with pytest.raises(ValueError, match=r"callbacks\.rejection_sampling"):
        train(cfg)
