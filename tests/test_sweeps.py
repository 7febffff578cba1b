"""Hyperparameter search (hparams_search=optuna) and launcher configs (launcher=joblib / submitit_slurm).

They need optional extras (pip install -e ".[sweeps,slurm]", part of ".[dev]"); without them the tests skip.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, compose_train

ROOT = Path(__file__).resolve().parents[1]


def test_optuna_search_runs_three_trials_and_reports_the_best(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason='hydra-optuna-sweeper is not installed (pip install -e ".[sweeps]")')
    sweep = tmp_path / "sweep"
    micro = [o for o in TINY if not o.startswith("trainer.max_steps")] + [
        "trainer.max_steps=2", "warm_start.steps=2", "callbacks.pareto_eval.num_prompts=2", "logger=none", "threads=1"]
    cmd = [sys.executable, "-m", "meal_pl.train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3",
           "objective=synthetic", *micro, f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["name"] == "optuna" and set(result["best_params"]) == {
        "algorithm.policy_optimizer.lr", "algorithm.pwn_optimizer.lr", "algorithm.meta.inner_lr", "algorithm.sampler.tau"}
    rows = yaml.safe_load((sweep / "sweep_summary.json").read_text())
    assert len(rows) == 3 and max(r["hypervolume"] for r in rows) == pytest.approx(result["best_value"])
    assert "Best value: " in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "launcher, module, checks",
    [
        ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher", {"timeout_min": 240, "tasks_per_node": 1, "partition": None}),
        ("joblib", "hydra_plugins.hydra_joblib_launcher", {"n_jobs": 2, "backend": "loky"}),
    ],
)
def test_launcher_configs_compose(launcher, module, checks, tmp_path):
    pytest.importorskip(module, reason=f'{module} is not installed (pip install -e ".[sweeps,slurm]")')
    cfg = compose_train([f"launcher={launcher}"], tmp_path)
    assert cfg.hydra.launcher._target_.startswith(module)
    assert {k: cfg.hydra.launcher[k] for k in checks} == checks
