"""SmolLM2-135M-Instruct (offline GGUF wheel) trains for a few Meal steps on CPU: slow, run with -m slow."""

import json

import pytest
import torch
from conftest import compose_train

from meal_pl.train import train

SMALL = [
    "model=smollm2_135m", "warm_start.steps=0", "algorithm.meta.lookahead=first_order",
    "algorithm.sampler.num_samples=2", "algorithm.sampler.max_new_tokens=8", "algorithm.sampler.min_new_tokens=2",
    "algorithm.meta.meta_batch_size=4", "algorithm.meta.every_n_steps=1", "data.batch_size=2", "data.eval_size=8", "trainer.max_steps=3",
    "callbacks.pareto_eval.num_prompts=2", "callbacks.pareto_eval.num_points=3", "callbacks.pareto_eval.every_n_steps=100",
    "callbacks.generations.num_prompts=2", "logger=none", "~callbacks.progress_bar",
]


@pytest.mark.slow
@pytest.mark.parametrize("lora", ["model.lora.r=0", "model.lora.r=8"], ids=["full", "lora"])
def test_smollm2_trains_and_saves_generations_under_opposite_preferences(tmp_path, lora):
    cfg = compose_train(SMALL + [lora], tmp_path)
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/policy_loss"]))
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 3
    record = json.loads((tmp_path / "generations.json").read_text())
    assert record["preferences"] == [[1.0, 0.0], [0.0, 1.0]]
    for sample in record["samples"]:
        texts = list(sample["responses"].values())
        assert list(sample["responses"]) == ["<helpful:1.00><harmless:0.00>", "<helpful:0.00><harmless:1.00>"]
        assert all(isinstance(t, str) and t.strip() for t in texts)  # real text, not empty answers
