"""A checkpoint that would run code when unpickled is refused by every path that loads one, and nothing runs."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from conftest import TINY, compose_train, train_cli

from meal_pl import evaluate, export, generate
from meal_pl.restore import run_cli
from meal_pl.train import train


class RunsACommand:
    """What a stranger's checkpoint may carry: unpickling it calls os.system."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(compose_train(TINY + ["objective=synthetic", "logger=none", "trainer.max_steps=2",
                                "callbacks.pareto_eval.every_n_steps=100"], out))
    return out


@pytest.fixture
def tampered(run_dir, tmp_path):
    """(a copy of the run's last.ckpt with one extra pickled object, the file that object's command would create)."""
    marker = tmp_path / "the_command_ran"
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state["meal_state"]["note"] = RunsACommand(f"touch {marker}")
    bad = run_dir / "checkpoints" / "tampered.ckpt"  # beside last.ckpt, so the run directory is found
    torch.save(state, bad)
    yield bad, marker
    bad.unlink()


@pytest.mark.parametrize("cli, extra", [(generate, ["prompt=Hi"]), (evaluate, []), (export, ["out=OUT"])])
def test_the_checkpoint_clis_refuse_it_and_nothing_runs(tampered, cli, extra, tmp_path, monkeypatch, capsys):
    bad, marker = tampered
    args = [a.replace("OUT", str(tmp_path / "export")) for a in extra]
    monkeypatch.setattr(sys, "argv", [cli.__name__, f"ckpt_path={bad}", *args])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(cli.main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert f"checkpoint {bad} refused: it holds a posix.system object" in err or "nt.system" in err
    assert not marker.exists() and not (tmp_path / "export").exists()


def test_resume_refuses_it_and_nothing_runs(tampered, tmp_path, monkeypatch, capsys):
    bad, marker = tampered
    code, err = train_cli(monkeypatch, capsys, *TINY, "objective=synthetic", "logger=none", f"ckpt_path={bad}",
                          f"hydra.run.dir={tmp_path / 'resumed'}")
    assert code == 1 and not marker.exists()
    assert err.strip().splitlines()[-1].startswith(f"error: checkpoint {bad} refused: it holds a ")


@pytest.mark.parametrize("target, reason", [("os.system", "is blocklisted"), ("meal_pl.nope.Reward", "Error locating target")])
def test_a_run_config_that_cannot_be_rebuilt_is_one_line(run_dir, tmp_path, target, reason, monkeypatch, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = copy / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("_target_: meal_pl.rewards.synthetic.WordShareReward", f"_target_: {target}", 1))
    monkeypatch.setattr(sys, "argv", ["evaluate", f"ckpt_path={copy}"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate.main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: run {copy}: its config") and "(key objective.rewards." in err and reason in err
