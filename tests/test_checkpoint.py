"""Checkpoint safety: atomic writes, refusal of corrupt or mismatched files, ckpt_path=last, no overwritten runs."""

import os
import sys
import time

import pytest
import torch
from conftest import ONE_STEP, compose_train
from omegaconf import OmegaConf

from meal_pl import train as entry
from meal_pl.checkpoint import SafeCheckpointIO, find_last_checkpoint
from meal_pl.runs import RunGuard
from meal_pl.train import resolve_ckpt_path, train


def _checkpoint(step: int) -> dict:
    return {"state_dict": {"w": torch.full((3,), float(step))}, "meal_state": {"step": step}, "global_step": step}


def test_a_crash_during_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    io, path = SafeCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(1), path)
    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half the bytes are on disk when the "process dies"
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(_checkpoint(2), path)
    monkeypatch.setattr(torch, "save", real_save)
    assert io.load_checkpoint(path)["global_step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]  # the temp file is gone too
    io.save_checkpoint(_checkpoint(3), path)
    assert io.load_checkpoint(path)["global_step"] == 3


def test_corrupt_or_foreign_checkpoints_are_refused_naming_the_path(tmp_path):
    io, good = SafeCheckpointIO(), tmp_path / "good.ckpt"
    io.save_checkpoint(_checkpoint(1), good)
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    for path in (torn, garbage):
        with pytest.raises(ValueError, match=f"checkpoint {path} is corrupt or not a checkpoint") as err:
            io.load_checkpoint(path)
        assert "\n" not in str(err.value)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not written by meal-pl"):
        io.load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        io.load_checkpoint(tmp_path / "missing.ckpt")


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("micro")
    train(compose_train(ONE_STEP, out))
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    "override, message",
    [
        ("objective=synthetic3", r"objective_names \['a_to_m', 'n_to_z'\] in the checkpoint, \['a_to_h', 'i_to_p', 'q_to_z'\] in this run"),
        ("model.hidden_size=48", r"does not match this model: \d+ tensors differ in shape"),
        ("pwn=uniform", r"does not match this model: .* unexpected"),
        ("data.max_prompts=40", r"tokenizer \w+ in the checkpoint, \w+ in this run"),  # same vocab size, other merges: shapes alone agree
    ],
)
def test_mismatched_checkpoint_is_refused_with_what_differs(micro_checkpoint, tmp_path, override, message):
    cfg = compose_train(ONE_STEP + [override, f"ckpt_path={micro_checkpoint}"], tmp_path)
    with pytest.raises(ValueError, match=message) as err:
        train(cfg)
    assert str(micro_checkpoint) in str(err.value) and "\n" not in str(err.value)


SYNTHETIC = {"objective": "synthetic", "model": "tiny", "algorithm": "meal", "pwn": "net"}


def fake_run(runs, name: str, choices: dict | None, age: int) -> None:
    """A run directory with a checkpoint (mtime now + age) and, unless None, its recorded group choices."""
    ckpt = runs / name / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    os.utime(ckpt, (time.time() + age, time.time() + age))
    if choices is not None:
        (runs / name / ".hydra").mkdir()
        OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), runs / name / ".hydra" / "hydra.yaml")


def test_ckpt_path_last_is_the_newest_earlier_run_of_the_same_experiment(tmp_path):
    runs = tmp_path / "outputs" / "train"
    fake_run(runs, "old", SYNTHETIC, 0)
    fake_run(runs, "new", SYNTHETIC, 1)
    fake_run(runs, "other_objective", {**SYNTHETIC, "objective": "helpful_harmless"}, 2)
    fake_run(runs, "other_algorithm", {**SYNTHETIC, "algorithm": "ric", "pwn": "uniform"}, 3)
    fake_run(runs, "other_conditioning", {**SYNTHETIC, "conditioning": "prefix"}, 4)
    fake_run(runs, "unrecorded", None, 5)
    fake_run(runs, "current", SYNTHETIC, 6)
    assert find_last_checkpoint(runs, exclude=runs / "current") == runs / "unrecorded" / "checkpoints" / "last.ckpt"
    cfg = OmegaConf.create({"ckpt_path": "last", "task_name": "train", "hydra": {"runtime": {"choices": SYNTHETIC}},
                            "paths": {"root_dir": str(tmp_path / "outputs"), "output_dir": str(runs / "current")}})
    assert resolve_ckpt_path(cfg) == str(runs / "new" / "checkpoints" / "last.ckpt")
    cfg.hydra.runtime.choices = {**SYNTHETIC, "model": "smollm2_135m"}
    with pytest.raises(FileNotFoundError, match="none of the 6 earlier runs .* has objective=synthetic, model=smollm2_135m, algorithm=meal;"):
        resolve_ckpt_path(cfg)
    cfg.hydra.runtime.choices = {**SYNTHETIC, "conditioning": "prefix"}  # a group that may appear later is compared too
    assert resolve_ckpt_path(cfg) == str(runs / "other_conditioning" / "checkpoints" / "last.ckpt")
    with pytest.raises(FileNotFoundError, match="ckpt_path=last: no earlier run has a checkpoint"):
        find_last_checkpoint(tmp_path / "nowhere")
    cfg.ckpt_path = str(tmp_path / "typo.ckpt")
    with pytest.raises(FileNotFoundError, match="typo.ckpt: no such checkpoint file; give a .ckpt path, a run directory"):
        resolve_ckpt_path(cfg)


def test_a_run_never_starts_in_a_directory_that_holds_files(tmp_path, monkeypatch, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "pareto.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", ["meal_pl.train", f"hydra.run.dir={used}", *ONE_STEP])
    with pytest.raises(SystemExit) as exit_:
        entry.cli()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"error: hydra.run.dir={used} already holds an earlier run; meal-pl never writes into one: choose a new "
        "hydra.run.dir or drop the override (the default is a fresh time-stamped directory)"
    )
    assert os.listdir(used) == ["pareto.json"] and (used / "pareto.json").read_text() == "{}"
    RunGuard().on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "fresh")}}}))
    with pytest.raises(SystemExit):
        RunGuard().on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(used)}}}))


def test_ckpt_path_last_without_a_matching_run_is_refused_before_a_run_directory_exists(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "train"
    fake_run(runs, "synthetic_run", SYNTHETIC, 0)
    monkeypatch.setattr(sys, "argv", ["meal_pl.train", "objective=helpful_harmless", "ckpt_path=last", f"paths.root_dir={tmp_path}"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        entry.cli()
    err = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: ckpt_path=last: none of the 1 earlier runs with a checkpoint in ")
    assert "objective=helpful_harmless, model=tiny, algorithm=meal" in err[0]
    assert sorted(p.name for p in runs.iterdir()) == ["synthetic_run"]  # no new run directory
