"""The warm start as its own stage (meal_pl/warm_start.py): kept under what determines it, reused, written whole."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train

from meal_pl.dpo_warm_start import dpo_metrics
from meal_pl.train import build_run
from meal_pl.warm_start import WEIGHTS, settings_digest, warm_start_settings

ROOT = Path(__file__).resolve().parents[1]
# The tiny run with its warm start kept: TINY less its "train every time".
KEPT = [o for o in TINY if not o.startswith("warm_start.reuse")] + ["objective=synthetic", "logger=none", "trainer.max_steps=1",
                                                                    "~callbacks.pareto_eval", "~callbacks.run_summary"]


def kept_cfg(tmp_path: Path, run: str, *extra: str):
    return compose_train(KEPT + [f"warm_start.cache_dir={tmp_path / 'cache'}", *extra], tmp_path / run)


def digest_of(tmp_path: Path, *extra: str) -> str:
    return settings_digest(warm_start_settings(kept_cfg(tmp_path, "run", *extra)))


def test_what_determines_a_warm_start_names_it(tmp_path):
    base = digest_of(tmp_path)
    assert digest_of(tmp_path, "data.batch_size=2") == base  # the online phase's batch: not the warm start's
    assert digest_of(tmp_path, "algorithm=ric") == base  # every method shares it (the bench's fairness)
    for other in ("warm_start.lr=1e-3", "warm_start.steps=6", "warm_start.batch_size=4", "model.hidden_size=16",
                  "conditioning=tags", "seed=1", "algorithm.max_prompt_length=64", "warm_start.loss=dpo"):
        assert digest_of(tmp_path, other) != base, other
    # with its own seed, every run seed shares one (here with the tiny model's initialisation fixed: a pretrained
    # model's is its checkpoint)
    own = ("warm_start.seed=0", "model.init_seed=0")
    assert digest_of(tmp_path, *own, "seed=1") == digest_of(tmp_path, *own, "seed=2")


def fit(cfg) -> tuple[torch.nn.Module, dict]:
    datamodule, module, trainer = build_run(cfg)
    trainer.fit(module, datamodule=datamodule)
    # what the step computed (its speed aside)
    return module, {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1 and not k.startswith("perf/")}


def test_a_second_run_reuses_the_kept_warm_start_and_continues_exactly_as_the_first(tmp_path, caplog):
    with caplog.at_level("INFO", logger="meal_pl"):
        first, first_metrics = fit(kept_cfg(tmp_path, "a"))
        assert "warm start kept in" in caplog.text and "warm start reused from" not in caplog.text
        caplog.clear()
        second, second_metrics = fit(kept_cfg(tmp_path, "b"))
        assert "warm start reused from" in caplog.text
    kept = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert [p.name for p in kept] == [digest_of(tmp_path)]
    # the same weights after the step, and the same step figures: the run's random stream continued as it did
    for (name, a), (_, b) in zip(first.policy.state_dict().items(), second.policy.state_dict().items()):
        assert torch.equal(a, b), name
    assert first_metrics == second_metrics and first_metrics
    metrics = json.loads((kept[0] / "metrics.json").read_text())
    assert metrics["loss"]["steps"] == 5 and metrics["pairs"] > 0


def test_a_differing_setting_trains_a_new_one(tmp_path, caplog):
    fit(kept_cfg(tmp_path, "a"))
    with caplog.at_level("INFO", logger="meal_pl"):
        fit(kept_cfg(tmp_path, "b", "warm_start.lr=1e-3"))
    assert "warm start kept in" in caplog.text and "warm start reused from" not in caplog.text
    assert len([p for p in (tmp_path / "cache").iterdir() if (p / WEIGHTS).is_file()]) == 2


def test_a_stage_that_dies_while_writing_is_never_reused(tmp_path, monkeypatch, caplog):
    def crash(*args):
        raise OSError("killed while writing")

    monkeypatch.setattr("meal_pl.warm_start.os.replace", crash)
    with pytest.raises(OSError, match="killed while writing"):
        fit(kept_cfg(tmp_path, "a"))
    assert not (tmp_path / "cache" / digest_of(tmp_path)).exists()  # only the partial copy under its temporary name
    monkeypatch.undo()
    with caplog.at_level("INFO", logger="meal_pl"):
        fit(kept_cfg(tmp_path, "b"))
    assert "warm start kept in" in caplog.text and "warm start reused from" not in caplog.text


def stage_command(tmp_path: Path, *extra: str) -> list[str]:
    overrides = [o for o in KEPT if not o.startswith("~callbacks")]
    return [sys.executable, "-m", "meal_pl.warm_start", *overrides, f"warm_start.cache_dir={tmp_path / 'cache'}",
            f"paths.root_dir={tmp_path / 'outputs'}", "threads=1", *extra]


def test_a_killed_stage_leaves_nothing_to_reuse(tmp_path):
    # SIGKILL in the middle of a long warm start: no directory under the final name, and the lock is released
    proc = subprocess.Popen(stage_command(tmp_path, "warm_start.steps=100000"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any((tmp_path / "cache").glob(".*.lock")):
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == []
    done = subprocess.run(stage_command(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "warm start kept in" in done.stdout


def test_two_jobs_that_need_the_same_warm_start_train_it_once(tmp_path):
    procs = [subprocess.Popen(stage_command(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum("warm start kept in" in out for out in outputs) == 1, outputs
    assert sum("warm start reused from" in out for out in outputs) == 1, outputs
    kept = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(kept) == 1 and (kept[0] / WEIGHTS).is_file() and (kept[0] / "settings.json").is_file()
    # the command says where it is, and names it as train does
    assert all(f"warm start: {kept[0]}" in out for out in outputs)


def test_a_given_path_is_used_and_a_missing_one_named(tmp_path, caplog):
    fit(kept_cfg(tmp_path, "a"))
    (kept,) = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    with caplog.at_level("INFO", logger="meal_pl"):
        fit(kept_cfg(tmp_path, "b", f"warm_start.path={kept}", "warm_start.lr=1e-3"))
    assert f"warm start reused from {kept}" in caplog.text and "other settings than this run's (warm_start)" in caplog.text
    with pytest.raises(FileNotFoundError, match="warm_start.path=/nowhere: no weights.safetensors"):
        fit(kept_cfg(tmp_path, "c", "warm_start.path=/nowhere"))


def test_dpo_metrics_are_trls_implicit_rewards():
    # beta * (log pi - log pi_ref): chosen +0.2, -0.1; rejected -0.1, +0.1 (beta 0.1)
    policy = [(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0]))]
    reference = [(torch.tensor([-3.0, -2.0]), torch.tensor([-1.0, -2.0]))]
    m = dpo_metrics(policy, reference, 0.1)
    assert m["pairs"] == 2 and m["rewards/accuracies"] == 0.5
    assert m["rewards/chosen"] == pytest.approx(0.05) and m["rewards/rejected"] == pytest.approx(0.0)
    assert m["rewards/margins"] == pytest.approx(0.05)
    assert dpo_metrics([], [], 0.1) == {}


def test_a_dpo_stage_reports_held_out_pairs(tmp_path):
    # data=default's two answers per prompt; a tenth of the prompts held out of the DPO warm start
    cfg = compose_train([o for o in TINY if not o.startswith("warm_start.")] + [
        "warm_start=dpo", "warm_start.steps=2", "warm_start.heldout=0.2", f"warm_start.cache_dir={tmp_path / 'c'}",
        "logger=none", "trainer.max_steps=1", "~callbacks.pareto_eval", "~callbacks.run_summary"], tmp_path / "run")
    fit(cfg)
    (kept,) = [p for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")]
    metrics = json.loads((kept / "metrics.json").read_text())
    held = metrics["heldout"]
    assert held["pairs"] > 0 and 0 <= held["rewards/accuracies"] <= 1 and metrics["loss"]["steps"] == 2
    assert json.loads((kept / "settings.json").read_text())["warm_start"]["seed"] == 0
    assert not (kept / "rng.json").exists()  # its own stream: the run's is untouched


def test_the_lock_file_is_beside_not_inside_the_kept_directory(tmp_path):
    fit(kept_cfg(tmp_path, "a"))
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names[0].startswith(".") and names[0].endswith(".lock") and not names[1].startswith(".")
