"""The GPU recipes (experiment=qwen2_5_0_5b_hh, llama2_7b_fsdp): their settings compose, and run two steps on a CPU
with tiny stand-ins of the same architectures. The GPU itself is the part left unverified (docs/hardware.md)."""

from __future__ import annotations

import math

import pytest
from conftest import compose_train

from meal_pl.train import train

# What a CPU test must swap: the model for a stand-in of its architecture, the hub rewards and data for the offline
# ones, the GPU strategy for the CPU; and sizes a test can afford.
OFFLINE = ["hardware=cpu", "objective=helpful_harmless", "data=hh_red_team", "logger=none", "~callbacks.progress_bar",
           "trainer.max_steps=2", "warm_start.steps=2", "warm_start.batch_size=2", "warm_start.reuse=false",
           "data.batch_size=2", "data.eval_size=4", "data.max_prompts=64", "algorithm.sampler.max_new_tokens=8",
           "algorithm.max_prompt_length=64", "callbacks.pareto_eval.num_prompts=2", "callbacks.pareto_eval.num_points=3",
           "callbacks.pareto_eval.requests_points=2", "callbacks.generations.num_prompts=1"]
STAND_INS = {
    "qwen2_5_0_5b_hh": ["model=tiny_qwen2", "model.dtype=float32", "model.attn_implementation=eager"],
    "llama2_7b_fsdp": ["model=tiny", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
                       "model.intermediate_size=64", "model.vocab_size=512"],
}


@pytest.mark.parametrize("recipe", sorted(STAND_INS))
def test_a_recipe_runs_two_steps_on_a_cpu_with_a_stand_in(recipe, tmp_path):
    cfg = compose_train([f"experiment={recipe}", *OFFLINE, *STAND_INS[recipe]], tmp_path)
    metrics = train(cfg)
    assert math.isfinite(metrics["train/policy_loss"]) and "pareto/hypervolume" in metrics


def test_the_recipes_carry_the_settings_measured_on_smollm2(tmp_path):
    qwen = compose_train(["experiment=qwen2_5_0_5b_hh"], tmp_path)
    assert qwen.model.name == "Qwen/Qwen2.5-0.5B-Instruct" and qwen.model.chat_template and qwen.model.lora.r == 16
    assert qwen.conditioning._target_ == "meal_pl.conditioning.TextPreferenceConditioner"
    assert qwen.warm_start.loss == "dpo" and qwen.warm_start.sft_weight == 1.0
    assert qwen.algorithm.policy_optimizer.lr == 1e-4 and qwen.trainer.precision == "bf16-mixed"
    assert qwen.data.data_dir == "harmless-base" and qwen.algorithm.sampler.max_new_tokens == 128
    assert all(r.device == "auto" for r in qwen.objective.rewards.values())
    llama = compose_train(["experiment=llama2_7b_fsdp"], tmp_path)
    assert llama.trainer.strategy._target_.endswith("FSDPStrategy") and llama.algorithm.meta.lookahead == "alternating"
    assert llama.model.gradient_checkpointing and llama.model.lora.r == 16
