"""Shared fixtures: compose the real Hydra config with tiny sizes, as the entry point would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# The tests run offline, as the commands do (importing meal_pl no longer sets it): before huggingface_hub is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONF = str(Path(__file__).resolve().parents[1] / "conf")

# Micro sizes: a few seconds per run on 2 CPU cores.
TINY = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "model.vocab_size=512",
    "warm_start.steps=5",
    "warm_start.reuse=false",  # every test trains its own; tests/test_warm_start.py tests keeping and reusing
    "algorithm.sampler.max_new_tokens=8",
    "algorithm.sampler.num_samples=2",
    "data.batch_size=4",
    "data.eval_size=8",
    "callbacks.pareto_eval.num_prompts=4",
    "callbacks.pareto_eval.every_n_steps=2",
    "trainer.max_steps=3",
    "algorithm.meta.every_n_steps=1",  # runs of a few steps must reach the meta step (default: every 8)
    "~callbacks.progress_bar",
]

# One policy step on the synthetic objective, no warm start, no evaluation, no logs: for tests of what happens
# around a run (checkpoints, errors, faults), not of what it learns.
ONE_STEP = TINY + [
    "objective=synthetic",
    "logger=none",
    "warm_start.steps=0",
    "trainer.max_steps=1",
    "~callbacks.pareto_eval",
    "~callbacks.run_summary",
]


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """The composed `train` config with Hydra's runtime fields set, pointed at output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def one_thread():
    """Micro models gain nothing from intra-op threads, and OpenMP threads spin against each other on busy
    shared cores: one thread keeps such tests fast. Modules opt in with pytestmark."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_cfg(tmp_path):
    """Factory: compose with TINY + extra overrides."""
    return lambda *extra: compose_train(TINY + list(extra), tmp_path)


def train_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`python -m meal_pl.train *args` in-process, as a user's shell runs it: (exit code, stderr)."""
    import sys

    from meal_pl import train as entry

    monkeypatch.setattr(sys, "argv", ["meal_pl.train", *args])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        entry.cli()
    return exit_.value.code, capsys.readouterr().err
