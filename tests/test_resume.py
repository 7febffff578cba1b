"""Exact resume: a run killed mid-training and resumed ends bit-for-bit where the uninterrupted run ends (CPU)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train
from omegaconf import open_dict

from meal_pl.train import train

ROOT = Path(__file__).resolve().parents[1]
# 12 training prompts in batches of 4: 3 batches per epoch, so 4 steps cross an epoch boundary and the
# data position matters. Checkpoints every 2 steps; evaluation only at the start and the end.
RESUME = TINY + [
    "objective=synthetic",
    "logger=none",
    "data.max_prompts=12",
    "trainer.max_steps=4",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.pareto_eval.every_n_steps=100",
    "callbacks.pareto_eval.num_prompts=2",
    "~callbacks.run_summary",
]


def _run(out: Path, *extra: str, runs_dir: Path | None = None) -> dict[str, float]:
    cfg = compose_train(RESUME + list(extra), out)
    if runs_dir is not None:
        with open_dict(cfg):
            cfg.paths.root_dir = str(runs_dir)
    return train(cfg)


def _final(out: Path, metrics: dict[str, float]) -> dict:
    """What must agree: metrics (wall-clock throughput aside), pareto.json, and the final checkpoint."""
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    return {
        "metrics": {k: v for k, v in metrics.items() if not k.startswith("perf/")},
        "pareto": json.loads((out / "pareto.json").read_text()),
        "ckpt": ckpt,
    }


def _assert_same(a, b, where="checkpoint"):
    """Exact equality of nested checkpoint contents (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _assert_resumed_equals(resumed: dict, full: dict) -> None:
    assert resumed["metrics"] == full["metrics"]
    assert resumed["pareto"] == full["pareto"]
    a, b = resumed["ckpt"], full["ckpt"]
    assert a["global_step"] == b["global_step"] == 4
    # Policy, pi_ref, PWN, reward statistics; both optimisers and the LR schedule; buffers, counters, RNG.
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "meal_state"):
        _assert_same(a[key], b[key], key)
    # the policy's optimiser is Lightning's; the PWN's own optimiser travels in meal_state (compared above)
    assert len(a["optimizer_states"]) == 1 and a["meal_state"]["pwn_optimizer"]
    # the meta step's carried state (the alternating statistics, gathered rollouts or v1's sample buffer) is in it
    assert any(a["meal_state"][k] for k in ("alt_buffer", "pending", "meta_buffer"))
    assert a["state_dict"]["reward_norm.count"] > 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return _final(out, _run(out))


def test_sigkill_mid_training_then_ckpt_path_last_matches_uninterrupted_run(uninterrupted, tmp_path):
    runs = tmp_path / "runs"
    killed = runs / "train" / "killed"
    cmd = [sys.executable, "-m", "meal_pl.train", *RESUME, f"hydra.run.dir={killed}", f"paths.root_dir={runs}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ | {"HYDRA_FULL_ERROR": "1"})
    ckpt = killed / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 300
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no handler, no cleanup, possibly in the middle of the next step or save
        _, stderr = proc.communicate()
    finally:
        proc.kill()
    assert ckpt.exists(), stderr.decode()[-2000:]
    step = torch.load(ckpt, weights_only=True)["global_step"]
    assert 0 < step < 4, f"the run must be killed mid-training (checkpoint at step {step})"

    resumed_dir = runs / "train" / "resumed"
    metrics = _run(resumed_dir, "ckpt_path=last", runs_dir=runs)
    _assert_resumed_equals(_final(resumed_dir, metrics), uninterrupted)
    assert not (killed / "pareto.json").exists()  # the killed run's directory was left as it was


def test_resume_from_an_epoch_end_checkpoint_for_more_steps(uninterrupted, tmp_path):
    first = tmp_path / "first"
    _run(first, "trainer.max_steps=3")  # ends on the last batch of epoch 0; RunCheckpoint saves it
    assert torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    second = tmp_path / "second"
    metrics = _run(second, f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    _assert_resumed_equals(_final(second, metrics), uninterrupted)
    # Resumed at its own max_steps, Lightning would stop at once and write nothing: refused, naming the fix.
    with pytest.raises(ValueError, match=r"is at step 3 and trainer.max_steps=3: nothing is left to train; give "
                                         r"trainer.max_steps > 3"):
        _run(tmp_path / "third", "trainer.max_steps=3", f"ckpt_path={first}")


def test_resume_with_rollouts_gathered_for_the_next_meta_step(tmp_path):
    """Meta step every 3 steps: the checkpoint at step 2 holds 2 gathered rollouts; the resumed run uses them."""
    gathered = ["algorithm.meta.lookahead=second_order", "algorithm.meta.every_n_steps=3", "algorithm.meta.front_prompts=2"]
    full = tmp_path / "full"
    expected = _final(full, _run(full, *gathered))
    first = tmp_path / "first"
    _run(first, *gathered, "trainer.max_steps=2")
    saved = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)["meal_state"]["pending"]
    assert len(saved) == 2 and saved[0]["prompts"]
    second = tmp_path / "second"
    metrics = _run(second, *gathered, f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    _assert_resumed_equals(_final(second, metrics), expected)


def test_resume_with_frozen_weights_in_bf16_is_exact(tmp_path):
    """The checkpoint holds pi_ref in bfloat16; a resumed run rebuilds it in float32, loads it (exact) and casts it
    back at set-up (exact), so it ends where the uninterrupted bf16 run ends."""
    bf16 = ("trainer.precision=bf16-mixed", "frozen_weights_dtype=bfloat16")
    full = tmp_path / "full"
    expected = _final(full, _run(full, *bf16))
    assert expected["ckpt"]["state_dict"]["ref.model.embed_tokens.weight"].dtype == torch.bfloat16
    first = tmp_path / "first"
    _run(first, *bf16, "trainer.max_steps=3")
    second = tmp_path / "second"
    metrics = _run(second, *bf16, f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    _assert_resumed_equals(_final(second, metrics), expected)


def test_ckpt_path_takes_a_run_directory_as_the_checkpoint_commands_do(tmp_path):
    from omegaconf import OmegaConf

    from meal_pl.train import resolve_ckpt_path

    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    assert resolve_ckpt_path(OmegaConf.create({"ckpt_path": str(tmp_path / "run")})) == str(last)
    assert resolve_ckpt_path(OmegaConf.create({"ckpt_path": str(last)})) == str(last)
    (tmp_path / "empty").mkdir()  # a directory without checkpoints/last.ckpt
    with pytest.raises(FileNotFoundError, match=r"^ckpt_path=.*empty: no such checkpoint file; give a .ckpt path, a run "):
        resolve_ckpt_path(OmegaConf.create({"ckpt_path": str(tmp_path / "empty")}))
