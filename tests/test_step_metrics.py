"""step_metrics: the per-step values by hand on a two-prompt rollout, as plain floats and integer counts."""

import pytest
import torch
from conftest import TINY, compose_train
from lightning.pytorch.loggers.logger import DummyLogger

from meal_pl.rollout import Rollout
from meal_pl.step_metrics import distinct_token_share, step_metrics
from meal_pl.train import build_run


def rollout() -> Rollout:
    B, N, K = 2, 2, 2
    responses = torch.tensor([[4, 5, 0], [4, 5, 0], [6, 0, 0], [7, 8, 9]])  # prompt 0: N identical responses
    resp_mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]]).bool()
    raw = torch.tensor([[1.0, 0.0], [1.0, 0.0], [float("nan"), 0.5], [0.0, 1.0]])
    valid = torch.isfinite(raw).all(-1).view(B, N)
    return Rollout(
        prompts=["a", "b"], features=torch.zeros(B, 1), weights=torch.tensor([[0.5, 0.5], [1.0, 0.0]]),
        explore=torch.tensor([True, False]), responses=responses, resp_mask=resp_mask, raw=raw,
        rewards=raw.nan_to_num(0.0).view(B, N, K), valid=valid, keep=torch.tensor([[True, False], [False, True]]),
        selection=torch.tensor([[1.0, 0.0], [0.0, 1.0]]), prefix=torch.zeros(4, 1, dtype=torch.long),
        prefix_mask=torch.ones(4, 1, dtype=torch.long), ref_logp=torch.zeros(4, 3), non_dominated=valid,
        gen_time=2.0, counts={"truncated_prompts": 1, "invalid_rewards": (~valid).sum()},
    )


def test_step_metrics_by_hand():
    metrics, counts = step_metrics(rollout(), ["x", "y"], torch.tensor(0.25), torch.tensor([1.0, 2.0, 3.0, 4.0]), 1e-3)
    assert all(type(v) is float for v in metrics.values())
    assert metrics["reward/x"] == pytest.approx(2 / 3) and metrics["reward/y"] == pytest.approx(1 / 3)  # NaN sample out
    assert metrics["reward/scalarized"] == (0.5 + 0.0) / 2  # w.R of the selected samples, mean over prompts
    assert metrics["pwn/weight_x"] == 0.75 and metrics["train/policy_loss"] == 0.25 and metrics["train/lr"] == 1e-3
    assert metrics["train/kl"] == (1.0 + 4.0) / 2
    assert metrics["train/rejection_rate"] == pytest.approx(1 - 2 / 3) and metrics["train/exploration_rate"] == 0.5
    assert metrics["perf/tokens_per_s"] == 8 / 2.0 and metrics["train/response_length"] == 2.0
    assert metrics["train/distinct_tokens"] == 1.0  # no response repeats a token
    assert counts == {"truncated_prompts": 1, "invalid_rewards": 1, "empty_responses": 1, "identical_groups": 1}
    assert all(type(v) is int for v in counts.values())


def test_distinct_token_share_counts_each_token_once_and_ignores_padding():
    responses = torch.tensor([[3, 3, 3, 3], [1, 2, 1, 0], [0, 0, 0, 0], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert distinct_token_share(responses, mask).tolist() == pytest.approx([0.25, 2 / 3, 0.0, 1.0])


class RecordingLogger(DummyLogger):
    """A Lightning logger that keeps every log_metrics call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def log_metrics(self, metrics, step=None):
        self.calls.append((dict(metrics), step))


def test_step_metrics_reach_the_logger_once_per_log_every_n_steps_and_callback_metrics_every_step(tmp_path):
    cfg = compose_train(TINY + ["objective=synthetic", "logger=none", "~callbacks.model_checkpoint", "~callbacks.pareto_eval",
                                "~callbacks.generations", "trainer.max_steps=4", "trainer.log_every_n_steps=2"], tmp_path)
    datamodule, module, trainer = build_run(cfg)
    recorder = RecordingLogger()
    trainer.loggers = [recorder]
    trainer.fit(module, datamodule=datamodule)
    steps = [(step, metrics) for metrics, step in recorder.calls if "train/policy_loss" in metrics]
    assert [s for s, _ in steps] == [2, 4]  # one batch of scalars per log_every_n_steps, at the policy's step
    names = {"reward/a_to_m", "reward/n_to_z", "reward/scalarized", "pwn/weight_a_to_m", "pwn/weight_n_to_z",
             "train/policy_loss", "train/kl", "train/lr", "train/rejection_rate", "train/distinct_tokens", "perf/tokens_per_s",
             "count/invalid_rewards", "count/truncated_prompts", "count/empty_responses", "count/identical_groups"}
    for _, metrics in steps:
        assert names <= set(metrics) and all(type(v) is float for v in metrics.values())
    assert steps[-1][1]["train/policy_loss"] == pytest.approx(float(trainer.callback_metrics["train/policy_loss"]))
    assert names <= set(trainer.callback_metrics)
    assert {"loss", "reward"} <= set(trainer.progress_bar_metrics)
