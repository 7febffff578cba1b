"""The real entry point, driven through Hydra compose with micro sizes."""

import json
from pathlib import Path

import pytest
from conftest import CONF, compose_train
from hydra.utils import instantiate
from omegaconf import OmegaConf

from meal_pl.train import train

# rm_backend belongs to the reward_model app (tests/test_reward_model.py), not to train.
GROUPS = sorted(p.name for p in Path(CONF).iterdir() if p.is_dir() and p.name not in ("hydra", "rm_backend"))


@pytest.mark.parametrize(
    "override",
    [f"{group}={option.stem}" for group in GROUPS for option in sorted((Path(CONF) / group).glob("*.yaml"))],
)
def test_every_config_group_composes(override, tmp_path):
    extra = ["experiment=synthetic_quick"] if override.startswith("experiment") else []
    cfg = compose_train([override] + extra, tmp_path)
    OmegaConf.resolve(cfg.trainer)
    assert cfg.algorithm._target_.endswith("MealModule") and cfg.objective.rewards


def test_fast_dev_run_of_the_entry_point(tiny_cfg, tmp_path):
    cfg = tiny_cfg("debug=fast_dev_run", "objective=synthetic")
    metrics = train(cfg)
    assert metrics["train/policy_loss"] > 0
    report = json.loads((tmp_path / "pareto.json").read_text())
    assert len(report["points"]) == 11 and report["max_hypervolume"] == pytest.approx(0.45)


def test_full_default_pipeline_writes_outputs(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg())  # default objective: helpful_harmless with the offline reward models
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    report = json.loads((tmp_path / "pareto.json").read_text())
    assert report["objective_names"] == ["helpful", "harmless"]
    assert {"hypervolume", "reference_point", "points", "initial_hypervolume"} <= set(report)
    assert all(len(p["preference"]) == 2 for p in report["points"])
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert "pareto/hypervolume" in metrics and metrics["count/invalid_rewards"] == 0


def test_synthetic_training_raises_hypervolume(tiny_cfg, tmp_path):
    cfg = tiny_cfg(
        "objective=synthetic",
        "seed=0",
        "model.hidden_size=64",
        "model.num_layers=2",
        "warm_start.steps=40",
        "algorithm.sampler.num_samples=4",
        "algorithm.sampler.max_new_tokens=16",
        "data.batch_size=8",
        "trainer.max_steps=40",
        "callbacks.pareto_eval.every_n_steps=20",
        "callbacks.pareto_eval.num_prompts=16",
        "logger=none",
    )
    train(cfg)
    report = json.loads((tmp_path / "pareto.json").read_text())
    assert report["hypervolume"] > report["initial_hypervolume"]


def test_instantiated_objective_rewards_match_names(tmp_path):
    cfg = compose_train(["objective=synthetic"], tmp_path)
    rewards = instantiate(cfg.objective.rewards)
    assert list(rewards.keys()) == ["a_to_m", "n_to_z"]
