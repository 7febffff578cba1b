"""The rollout is a callback: swapped by config alone, required at start, and the module trains on what it hands over."""

import pytest
import torch
from omegaconf import open_dict

from meal_pl import losses
from meal_pl.callbacks.rejection_sampling import RejectionSampling, trained_rows_logprobs
from meal_pl.sequences import sequence_logprobs
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
    cfg = tiny_cfg("objective=synthetic", "logger=none", "warm_start.steps=0",
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


def test_rejected_samples_skip_the_reference_and_policy_passes(tiny_cfg):
    """A sample with a_ij = 0 is in no loss: its reference log-probs are not computed (0) and the policy's pass
    skips it, while L_in, its gradient and the kept samples' log-probs equal the full pass's."""
    torch.manual_seed(0)
    _, module, _ = build_run(tiny_cfg("objective=synthetic", "logger=none", "warm_start.steps=0",
                                          "algorithm.sampler.num_samples=4", "algorithm.sampler.drop_dominated=false"))
    r = RejectionSampling().rollout(module, ["Human: hello there Assistant:", "Human: tell me more Assistant:"])
    assert r.keep.all()
    r.keep[0, 1:3] = False  # two rejected samples, whatever the rewards said
    r.selection = r.selection.masked_fill(~r.keep, 0.0)
    r.selection = r.selection / r.selection.sum(-1, keepdim=True)
    rows = r.keep.flatten()
    with torch.no_grad(), module.reference() as ref:
        full_ref = sequence_logprobs(ref, r.prefix, r.prefix_mask, r.responses, conditioner=module.conditioner)
    r.ref_logp = trained_rows_logprobs(ref, r.prefix, r.prefix_mask, r.responses, rows, module.conditioner)
    assert torch.allclose(r.ref_logp[rows], full_ref[rows], atol=1e-5) and r.ref_logp[~rows].eq(0).all()

    params = [p for p in module.policy.parameters() if p.requires_grad]
    loss, kl = module.policy_loss(r)
    grads = torch.autograd.grad(loss, params)
    logp = sequence_logprobs(module.policy, r.prefix, r.prefix_mask, r.responses, conditioner=module.conditioner)
    full_loss, _, full_kl = losses.inner_loss(logp, full_ref, r.resp_mask, r.selection.flatten(), module.beta, len(r.prompts))
    full_grads = torch.autograd.grad(full_loss, params)
    assert torch.allclose(loss, full_loss, atol=1e-5) and torch.allclose(kl[rows], full_kl[rows].detach(), atol=1e-5)
    assert kl[~rows].eq(0).all()
    assert all(torch.allclose(g, h, atol=1e-6) for g, h in zip(grads, full_grads, strict=True))
