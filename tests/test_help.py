"""`--help` on every command: exit 0 and the command's arguments."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from meal_pl import evaluate, export, generate
from meal_pl.restore import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "module, args, expected",
    [(generate, ["--help"], "preference=auto"), (evaluate, ["-h"], "num_prompts=32"), (export, ["ckpt_path=x", "--help"], "reference=true")],
)
def test_checkpoint_cli_help_lists_arguments_and_exits_0(module, args, expected, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [module.__name__, *args])
    with pytest.raises(SystemExit) as exit_:
        run_cli(module.main, next(v for k, v in vars(module).items() if k.endswith("Args")))
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert out.startswith(f"python -m {module.__name__} key=value") and expected in out and "ckpt_path=null" in out


def test_train_help_through_hydra():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "meal_pl.train", "--help"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("meal_pl.train: train a policy")
    assert "hparams_search: optuna" in proc.stdout and "launcher: joblib, submitit_slurm" in proc.stdout


def test_bench_has_its_own_help():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="bench", return_hydra_config=True)
    assert cfg.hydra.help.app_name == "meal_pl.bench" and "bench.quick=true" in cfg.hydra.help.header
