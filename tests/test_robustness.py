"""Bad rewards and degenerate generations: dropped or counted, never a crash of the loss or the meta step."""

import math

import pytest
import torch
from conftest import ONE_STEP, compose_train

import meal_pl.models
from meal_pl.train import train

TWO_STEPS = ONE_STEP + ["trainer.max_steps=2"]


def nan_for_some(prompts, completions, **_):
    """Per step of 4 prompts x N=4: prompt 0 has no finite reward at all, prompt 1 one inf; the rest are fine."""
    return [math.nan if i % 16 < 4 else math.inf if i % 16 == 5 else len(c) % 5 / 5 for i, c in enumerate(completions)]


def nan_always(prompts, completions, **_):
    return [math.nan] * len(completions)


def _with_reward(fn: str) -> list[str]:
    return [
        "objective.rewards.a_to_m._target_=meal_pl.rewards.callable.PythonReward",
        "~objective.rewards.a_to_m.letters",
        "~objective.rewards.a_to_m.min_words",
        f"+objective.rewards.a_to_m.fn=test_robustness:{fn}",
    ]


def _assert_finite(metrics: dict[str, float], keys=("meta/outer_loss",)) -> None:
    for key in ("train/policy_loss", "train/kl", "meta/pwn_surrogate", "reward/scalarized", *keys):
        assert math.isfinite(metrics[key]), key


@pytest.mark.parametrize("lookahead", ["second_order", "alternating"])
def test_nan_and_inf_rewards_are_dropped_counted_and_training_goes_on(lookahead, tmp_path):
    # Every valid sample is selectable and no preference is explored, so the meta step runs on step 2 at the latest.
    choice = ["algorithm.sampler.num_samples=4", "algorithm.sampler.drop_dominated=false", "algorithm.meta.exploration=0",
              f"algorithm.meta.lookahead={lookahead}", "algorithm.meta.alternating_every=2"]
    metrics = train(compose_train(TWO_STEPS + choice + _with_reward("nan_for_some"), tmp_path))
    assert metrics["count/invalid_rewards"] == 2 * 5  # 5 bad samples per step, 2 steps
    _assert_finite(metrics, ("meta/outer_loss",) if lookahead == "second_order" else ())
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_all_rewards_bad_stops_the_run_with_a_clear_message(tmp_path):
    with pytest.raises(RuntimeError, match=r"every reward in the batch is NaN/inf \(objectives \['a_to_m', 'n_to_z'\]\)"):
        train(compose_train(TWO_STEPS + _with_reward("nan_always"), tmp_path))


def eos_first(**kwargs):
    """The tiny policy with the EOS logit pushed up by 1e4: every response is EOS at step 0."""
    model, tokenizer = TINY_LLAMA(**kwargs)
    eos = tokenizer.eos_token_id

    def push_eos(module, args, output):
        output.logits[..., eos] += 1e4
        return output

    model.register_forward_hook(push_eos)
    return model, tokenizer


TINY_LLAMA = meal_pl.models.tiny_llama


@pytest.mark.parametrize("case", ["eos_at_step_0", "identical_samples"])
def test_degenerate_generations_are_counted_and_do_not_break_the_step(case, tmp_path, monkeypatch):
    extra = ["algorithm.sampler.min_new_tokens=0"]
    if case == "eos_at_step_0":
        monkeypatch.setattr(meal_pl.models, "tiny_llama", eos_first)
    else:
        extra.append("algorithm.sampler.top_k=1")  # N samples of one prompt are the same greedy response
    # The alternating PWN update buffers the degenerate statistics and fits on them at step 2: run it once too.
    for lookahead in ("second_order", "alternating") if case == "eos_at_step_0" else ("second_order",):
        cfg = compose_train(TWO_STEPS + extra + [f"algorithm.meta.lookahead={lookahead}", "algorithm.meta.alternating_every=2"], tmp_path / lookahead)
        metrics = train(cfg)
        assert metrics["count/identical_groups"] == 2 * 4  # every group of every step
        if case == "eos_at_step_0":
            assert metrics["count/empty_responses"] == 2 * 4 * 2 and metrics["train/response_length"] == 1
        assert math.isfinite(metrics["train/policy_loss"]) and math.isfinite(metrics["meta/pwn_surrogate"])
