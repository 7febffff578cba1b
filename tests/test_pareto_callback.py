"""ParetoEvalCallback on a fake module: logging, files, steerability warning."""

import json
import warnings
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from meal_pl.callbacks import pareto_eval
from meal_pl.callbacks.pareto_eval import ParetoEvalCallback


class FakeModule(pl.LightningModule):
    """Implements the evaluation interface; the front moves outward as global_step grows."""

    objective_names = ["helpful", "harmless"]
    reference_point = [0.0, 0.0]
    grid_points = 11
    max_hypervolume = 0.5

    def __init__(self, constant: bool = False) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.constant = constant
        self.eval_calls: list[tuple[bool, bool]] = []  # (training, grad enabled) at each evaluation

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward((self.weight - 1).pow(2).sum())
        opt.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(torch.zeros(8, 1), batch_size=1)

    def eval_prompts(self, n: int) -> list[str]:
        return [f"prompt {i}" for i in range(n)]

    def evaluate_front(self, prompts: list[str], weights: torch.Tensor) -> torch.Tensor:
        self.eval_calls.append((self.training, torch.is_grad_enabled()))
        if self.constant:
            return torch.full_like(weights, 0.3)
        return weights * (1 + 0.01 * self.global_step)

    def evaluate_pwn_choice(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.tensor([0.6, 0.4])
        return w, w * (1 + 0.01 * self.global_step)


def _fit(tmp_path, module: FakeModule) -> tuple[pl.Trainer, ParetoEvalCallback]:
    callback = ParetoEvalCallback(every_n_steps=2, num_prompts=4)
    trainer = pl.Trainer(
        max_steps=4,
        logger=TensorBoardLogger(tmp_path),
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|log_every_n_steps).*")
        trainer.fit(module)
    return trainer, callback


def test_pareto_callback_logs_and_writes(tmp_path):
    module = FakeModule()
    trainer, callback = _fit(tmp_path, module)

    # Initial (step 0) and steps 2 and 4; the final evaluation reuses step 4's front.
    assert len(module.eval_calls) == 3
    assert all(call == (False, False) for call in module.eval_calls)  # eval mode, no grads
    assert module.training  # train mode restored

    report = json.loads((tmp_path / "pareto.json").read_text())
    assert (tmp_path / "pareto.png").stat().st_size > 0
    assert not list(tmp_path.glob(".pareto.json.*"))  # no temp file left behind
    for key in (
        "points",
        "hypervolume",
        "reference_point",
        "spacing",
        "sparsity",
        "mean_inner_product",
        "steerability",
        "steerable",
        "step",
        "initial_hypervolume",
        "hypervolume_ratio",
        "initial_front",
        "pwn_choice",
        "objective_names",
    ):
        assert key in report, key
    assert report["step"] == 4
    assert report["hypervolume"] > report["initial_hypervolume"] == pytest.approx(0.45)
    assert report["hypervolume_ratio"] == pytest.approx(report["hypervolume"] / 0.5)
    assert report["steerable"] is True
    assert report["pwn_choice"]["weights"] == pytest.approx([0.6, 0.4])
    assert report["draws"] == 1
    assert callback.final_report == report
    assert trainer.callback_metrics["pareto/hypervolume"].item() == pytest.approx(report["hypervolume"])

    (event_file,) = tmp_path.glob("lightning_logs/version_0/events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    hv_steps = [event.step for event in events.Scalars("pareto/hypervolume")]
    assert hv_steps == [0, 2, 4]
    assert "pareto/steerability_helpful" in events.Tags()["scalars"]
    assert "pareto/hypervolume_ratio" in events.Tags()["scalars"]
    assert [image.step for image in events.Images("pareto/front")] == [0, 2, 4]


def test_pareto_callback_warns_when_not_steerable(tmp_path):
    with pytest.warns(UserWarning, match="not steerable"):
        _fit(tmp_path, FakeModule(constant=True))
    assert json.loads((tmp_path / "pareto.json").read_text())["steerable"] is False


class GroupedFakeModule(FakeModule):
    """Adds the per-group interface: prompts alternate groups a/b; b's rewards are half of a's."""

    groups = ["a", "b", "a", "b"]

    def eval_groups(self, n: int) -> list[str]:
        return self.groups[:n]

    def evaluate_front(self, prompts, weights):
        raise AssertionError("evaluate_front_per_prompt replaces evaluate_front: nothing is generated twice")

    def evaluate_front_per_prompt(self, prompts: list[str], weights: torch.Tensor) -> torch.Tensor:
        self.eval_calls.append((self.training, torch.is_grad_enabled()))
        scale = torch.tensor([1.0 if g == "a" else 0.5 for g in self.groups[: len(prompts)]])
        return weights[:, None, :] * scale[None, :, None]  # (M,P,K)

    def pwn_weights(self, prompts: list[str]) -> torch.Tensor:
        assert not self.training and not torch.is_grad_enabled()
        return torch.tensor([[0.8, 0.2] if g == "a" else [0.3, 0.7] for g in self.groups[: len(prompts)]])


def test_pareto_callback_reports_per_group(tmp_path):
    module = GroupedFakeModule()
    _, callback = _fit(tmp_path, module)
    report = json.loads((tmp_path / "pareto.json").read_text())
    assert report["hypervolume"] == pytest.approx(0.45 * 0.75**2)  # the front is the mean over all prompts
    # every prompt follows w, so any redraw of the prompts steers perfectly: the interval is [1, 1]
    assert report["steerability_interval"] == {"helpful": pytest.approx([1.0, 1.0]), "harmless": pytest.approx([1.0, 1.0])}
    groups = report["groups"]
    assert set(groups) == {"a", "b"} and groups["a"]["num_prompts"] == 2
    assert groups["a"]["pwn_weights"] == pytest.approx([0.8, 0.2]) and groups["b"]["pwn_weights"] == pytest.approx([0.3, 0.7])
    assert groups["a"]["hypervolume"] == pytest.approx(0.45) and groups["b"]["hypervolume"] == pytest.approx(0.45 / 4)
    assert groups["b"]["hypervolume_ratio"] == pytest.approx(0.45 / 4 / 0.5)
    assert all(call == (False, False) for call in module.eval_calls)

    (event_file,) = tmp_path.glob("lightning_logs/version_0/events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    assert {"pwn/weights_helpful/a", "pwn/weights_harmless/b"} <= set(events.Tags()["histograms"])
    assert [e.step for e in events.Histograms("pwn/weights_helpful/a")] == [0, 2, 4]
    assert events.Histograms("pwn/weights_helpful/b")[0].histogram_value.sum == pytest.approx(0.6)  # 2 prompts x 0.3
    assert events.Scalars("pareto/hypervolume/b")[-1].value == pytest.approx(0.45 / 4)
    assert events.Scalars("pareto/steerability_harmless_low")[-1].value == pytest.approx(1.0)


def test_pareto_callback_without_groups_reports_none(tmp_path):
    _fit(tmp_path, FakeModule())
    report = json.loads((tmp_path / "pareto.json").read_text())
    assert report["groups"] == {} and "steerability_interval" not in report  # no rewards per prompt: no interval


@pytest.mark.parametrize("learnable", [True, False])
def test_the_final_tensorboard_front_marks_the_pwn_point_only_where_a_pwn_exists(tmp_path, monkeypatch, learnable):
    figures: list[dict] = []
    real_plot = pareto_eval.plot_front

    def recording_plot(weights, rewards, names, reference, path=None, extra=None):
        if path is None:  # the TensorBoard figure (the file pareto.png passes a path)
            figures.append(dict(extra or {}))
        return real_plot(weights, rewards, names, reference, path, extra)

    monkeypatch.setattr(pareto_eval, "plot_front", recording_plot)
    module = FakeModule()
    module.pwn = SimpleNamespace(learnable=learnable)  # meal's PWN learns; ric's Dirichlet source does not
    _, callback = _fit(tmp_path, module)
    assert len(figures) == 3  # steps 0, 2 and the final one (4)
    # Every evaluation after the start shows the PWN's own choice, where a PWN exists; the untrained start does not.
    assert "PWN choice" not in figures[0] and all(("PWN choice" in f) is learnable for f in figures[1:])
    choice = callback.final_report["pwn_choice"]
    assert choice["hypervolume_gain"] == 0.0  # FakeModule's choice (0.6, 0.4) x scale lies on its front's line
    assert callback.final_report["has_pwn"] is learnable


def test_draws_are_checked_at_construction_and_before_the_run_starts(tmp_path):
    with pytest.raises(ValueError, match=r"callbacks.pareto_eval.draws=0 must be >= 1"):
        ParetoEvalCallback(draws=0)
    module = FakeModule()  # answers the mean over prompts only: nothing to average per prompt
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, default_root_dir=tmp_path,
                         accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[ParetoEvalCallback(num_prompts=4, draws=2)])
    with pytest.raises(ValueError, match=r"draws=2 needs a module that answers per prompt"):
        trainer.fit(module)
    assert module.eval_calls == []  # refused before any evaluation


def test_the_base_models_front_is_the_untrained_policys_and_the_requests_are_answered_by_both(tiny_cfg):
    import json
    from pathlib import Path

    from meal_pl.train import train

    common = ("objective=helpful_harmless", "logger=none", "trainer.max_steps=1", "callbacks.pareto_eval.requests=shipped")
    cold = tiny_cfg(*common, "warm_start.steps=0")
    train(cold)
    untrained = json.loads((Path(cold.paths.output_dir) / "pareto.json").read_text())
    warm = tiny_cfg(*common)
    train(warm)
    report = json.loads((Path(warm.paths.output_dir) / "pareto.json").read_text())
    # measured before the warm start: the same front as the run that never warm-starts, and not the warm-started one
    assert report["base"]["front"] == untrained["initial_front"] == untrained["base"]["front"]
    assert report["base"]["front"] != report["initial_front"]
    for requests in (report["requests"], report["base"]["requests"]):
        assert requests["prompts"] == 64 and len(requests["front"]) == len(requests["english"]) == 3
        assert set(requests["groups"]) == {"everyday", "red_team"}
        assert all(0 <= share <= 1 for share in requests["english"] + requests["repeat_share"])
        assert set(requests["answers"]) == {"[1.0, 0.0]", "[0.0, 1.0]"} and len(requests["answers"]["[1.0, 0.0]"]["answers"]) == 64
