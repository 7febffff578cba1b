"""Evaluate the policy's Pareto front on a preference grid during training and write the final report.

The LightningModule provides: `objective_names`, `reference_point`, `grid_points`, `max_hypervolume`
(analytic maximum or None), `eval_prompts(n)`, `evaluate_front(prompts, weights) -> (M, K)` mean raw
rewards, and `evaluate_pwn_choice(prompts) -> (weights (K,), rewards (K,))`.

Per prompt group (data whose records name a `group`, e.g. objective=synthetic_prompted), used when present:
the datamodule's (or module's) `eval_groups(n) -> list[str | None]`, aligned with `eval_prompts(n)`; the
module's `evaluate_front_per_prompt(prompts, weights (M,K)) -> (M,P,K)` raw rewards per preference and prompt
(replacing `evaluate_front`, whose result is their mean over prompts, so nothing is generated twice); and
`pwn_weights(prompts) -> (P,K)`, the PWN's own weights per prompt (no exploration, no generation). Each
evaluation then logs `pareto/hypervolume/<group>` and histograms `pwn/weights_<objective>/<group>`, and
pareto.json gains `groups`: {group: {num_prompts, pwn_weights, front, hypervolume, hypervolume_ratio, pwn_choice}}.

The PWN's own choice (`preference=auto`): with `evaluate_pwn_choice_per_prompt(prompts) -> (weights (P,K), rewards
(P,K))` each held-out prompt is answered under the PWN's preference for it; its mean rewards, overall and per group,
and the hypervolume that this adaptive point adds to the static grid's front (0 when a grid preference dominates
it) go to pareto.json (`pwn_choice`), pareto.png, the summary and TensorBoard (`pareto/pwn_choice/*`, at every
evaluation of a module with a learned PWN).

Answers are sampled with the module's fixed evaluation seed, one per prompt and preference; one draw moves a
steerability by up to 0.7 (docs/results.md). `draws` > 1 answers every prompt that many times per preference (seeds
eval_seed, eval_seed + 1, ...) at each evaluation and averages each prompt's rewards, at `draws` times the cost: what
`python -m meal_pl.evaluate draws=N` does to a checkpoint, done by the run itself.
"""

import json
import logging
import os
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from meal_pl.callbacks.summary import has_pwn
from meal_pl.evaluation import front_over_draws, pwn_choice_over_draws
from meal_pl.language import is_english, repeat_share
from meal_pl.pareto import (
    front_report,
    group_names,
    hypervolume_gain,
    per_group_summary,
    plot_front,
    simplex_grid,
)
from meal_pl.ranges import check_integer

_log = logging.getLogger("meal_pl")


class ParetoEvalCallback(pl.Callback):
    """Logs hypervolume and front quality every `every_n_steps`; writes pareto.json/png at the end."""

    def __init__(
        self,
        every_n_steps: int = 50,
        num_points: int | None = None,
        num_prompts: int = 32,
        filename: str = "pareto",
        draws: int = 1,
        base_front: bool = True,
        requests: str | None = None,
        requests_points: int = 3,
    ) -> None:
        check_integer("callbacks.pareto_eval.every_n_steps", every_n_steps, 1)
        check_integer("callbacks.pareto_eval.num_prompts", num_prompts, 1, " (held-out prompts per evaluation)")
        if num_points is not None:
            check_integer("callbacks.pareto_eval.num_points", num_points, 2, ", or null for the objective's grid_points")
        if draws < 1:
            raise ValueError(f"callbacks.pareto_eval.draws={draws} must be >= 1 (answers per prompt and preference at "
                             "each evaluation)")
        self.draws = draws  # answers per prompt and preference, each prompt's rewards averaged (evaluation.py)
        self.every_n_steps = every_n_steps
        self.num_points = num_points
        self.num_prompts = num_prompts
        self.filename = filename
        self.initial_rewards: Tensor | None = None
        self.initial_hypervolume: float | None = None
        self.final_report: dict | None = None
        self._prompts: list[str] | None = None
        self._groups: list[str | None] | None = None  # the prompts' groups, None entries where unnamed
        self._last: tuple[int, Tensor, Tensor, dict] | None = None  # (step, weights, rewards, report)
        self._per_prompt: Tensor | None = None  # (M,P,K) rewards of the _last evaluation, when the module gives them
        self._choice: tuple[int, dict] | None = None  # (step, the PWN's own choice at that step)
        # The untrained model's front before the warm start, under the same prompts and sampling: whether training
        # helped. And requests written apart from the training pool (`requests`), answered by both at the end.
        self.base_front = base_front
        self.requests = read_requests(requests) if requests else None
        check_integer("callbacks.pareto_eval.requests_points", requests_points, 2, " (the simplex grid the requests are answered on)")
        self.requests_points = requests_points
        self.base: dict | None = None

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[Tensor, Tensor, dict]:
        """Rewards at every grid preference, in eval mode without grads; reuses a same-step result."""
        step = trainer.global_step
        if self._last is not None and self._last[0] == step:
            return self._last[1:]
        if self._prompts is None:
            self._prompts = pl_module.eval_prompts(self.num_prompts)
            self._groups = _eval_groups(trainer, pl_module, self.num_prompts)
        num_points = self.num_points if self.num_points is not None else pl_module.grid_points
        weights = simplex_grid(len(pl_module.objective_names), num_points)
        self._per_prompt = None
        if hasattr(pl_module, "evaluate_front_per_prompt"):
            per_prompt = _eval_mode(pl_module, front_over_draws, pl_module, self._prompts, weights.to(pl_module.device),
                                    self.draws)
            self._per_prompt = per_prompt.detach().float().cpu()  # (M,P,K)
            rewards = self._per_prompt.nanmean(1)
        else:
            rewards = _eval_mode(pl_module, pl_module.evaluate_front, self._prompts, weights.to(pl_module.device))
        rewards = rewards.detach().float().cpu()
        report = front_report(weights, rewards, pl_module.objective_names, pl_module.reference_point, self._per_prompt)
        self._last = (step, weights, rewards, report)
        return weights, rewards, report

    def _pwn_choice(self, trainer: pl.Trainer, pl_module: pl.LightningModule, front: Tensor) -> dict:
        """The PWN's own choice at this step: {weights (K,), rewards (K,), hypervolume_gain, per_prompt (P,K) or
        None}, the gain measured against the static grid's `front` (M,K); reuses a same-step result."""
        step = trainer.global_step
        if self._choice is not None and self._choice[0] == step:
            return self._choice[1]
        prompt_weights = None  # (P,K), when the module answers per prompt
        if hasattr(pl_module, "evaluate_pwn_choice_per_prompt"):
            prompt_weights, per_prompt = _eval_mode(pl_module, pwn_choice_over_draws, pl_module, self._prompts, self.draws)
            prompt_weights, per_prompt = prompt_weights.detach().float().cpu(), per_prompt.detach().float().cpu()
            weights, rewards = prompt_weights.mean(0), per_prompt.nanmean(0)
        else:
            weights, rewards = _eval_mode(pl_module, pl_module.evaluate_pwn_choice, self._prompts)
            weights, rewards, per_prompt = weights.detach().float().cpu(), rewards.detach().float().cpu(), None
        choice = {"weights": weights, "rewards": rewards, "per_prompt": per_prompt, "prompt_weights": prompt_weights,
                  "hypervolume_gain": hypervolume_gain(front, rewards, pl_module.reference_point)}
        self._choice = (step, choice)
        return choice

    def _group_summary(self, pl_module: pl.LightningModule, choice: dict | None = None) -> tuple[dict[str, dict], Tensor | None]:
        """Per-group PWN weights, hypervolume and (with `choice`) the PWN's own point of the _last evaluation,
        and the PWN's (P,K) weights."""
        if not group_names(self._groups):
            return {}, None
        pwn = None if choice is None else choice["prompt_weights"]  # the same weights: no second pass over the prompts
        if pwn is None and hasattr(pl_module, "pwn_weights"):
            pwn = _eval_mode(pl_module, pl_module.pwn_weights, self._prompts).detach().float().cpu()
        summary = per_group_summary(self._groups, pwn, self._per_prompt, pl_module.reference_point, pl_module.max_hypervolume,
                                    None if choice is None else choice["per_prompt"])
        return summary, pwn

    def _log(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        weights: Tensor,
        rewards: Tensor,
        report: dict,
        choice: dict | None = None,
    ) -> None:
        """Scalars and the front figure (with the PWN's own choice when given) to every logger; hypervolume
        into callback_metrics for monitors."""
        step = trainer.global_step
        metrics = {
            f"pareto/{key}": report[key]
            for key in ("hypervolume", "spacing", "sparsity", "mean_inner_product")
        }
        metrics |= {f"pareto/steerability_{name}": corr for name, corr in report["steerability"].items()}
        for name, (low, high) in report.get("steerability_interval", {}).items():
            metrics |= {f"pareto/steerability_{name}_low": low, f"pareto/steerability_{name}_high": high}
        groups, pwn = self._group_summary(pl_module, choice)
        metrics |= {f"pareto/hypervolume/{g}": s["hypervolume"] for g, s in groups.items() if s["hypervolume"] is not None}
        if choice is not None:
            metrics["pareto/pwn_choice/hypervolume_gain"] = choice["hypervolume_gain"]
            metrics |= {f"pareto/pwn_choice/{n}": r for n, r in zip(pl_module.objective_names, choice["rewards"].tolist(), strict=True)}
            metrics |= {f"pareto/pwn_choice/hypervolume_gain/{g}": s["pwn_choice"]["hypervolume_gain"]
                        for g, s in groups.items() if s.get("pwn_choice") and s["pwn_choice"]["hypervolume_gain"] is not None}
        ratio = _ratio(report["hypervolume"], pl_module.max_hypervolume)
        if ratio is not None:
            metrics["pareto/hypervolume_ratio"] = ratio
        # Written directly: callback_metrics is what ModelCheckpoint, the summary and sweepers read.
        trainer.callback_metrics.update({key: torch.tensor(value) for key, value in metrics.items()})
        # logger.log_metrics, not pl_module.log: self.log is not allowed in every train hook and would
        # be reduced across the epoch; these are point-in-time values at `step`.
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                fig = plot_front(
                    weights,
                    rewards,
                    pl_module.objective_names,
                    pl_module.reference_point,
                    extra=self._extra() | _choice_points(choice, groups),
                )
                logger.experiment.add_figure("pareto/front", fig, global_step=step, close=False)
                if pwn is not None:  # the PWN's weights on each prompt group: does it tell the families apart?
                    for g in groups:
                        rows = torch.tensor([i for i, name in enumerate(self._groups) if name == g])
                        for k, name in enumerate(pl_module.objective_names):
                            logger.experiment.add_histogram(f"pwn/weights_{name}/{g}", pwn[rows, k], global_step=step)

    def _extra(self) -> dict[str, Tensor]:
        extra = {} if self.initial_rewards is None else {"initial": self.initial_rewards}
        if self.base is not None and self.initial_rewards is not None \
                and self.base["front"] != self.initial_rewards.tolist():
            extra["base model"] = torch.tensor(self.base["front"])
        return extra

    def _requests_report(self, pl_module: pl.LightningModule) -> dict | None:
        """The held-out requests answered on the simplex grid of `requests_points`: mean rewards (M,K) overall and per
        group, the share of answers in English and of the most frequent answer text, and the answers at the corners."""
        if self.requests is None:
            return None
        weights = simplex_grid(len(pl_module.objective_names), self.requests_points)
        prompts, groups = self.requests
        M, P = len(weights), len(prompts)
        texts = _eval_mode(pl_module, pl_module.respond, prompts * M, weights.repeat_interleave(P, 0).to(pl_module.device))
        rewards = pl_module.rewards(prompts * M, texts).detach().float().cpu().view(M, P, -1)
        by_preference = [texts[m * P:(m + 1) * P] for m in range(M)]
        corners = [m for m in range(M) if float(weights[m].max()) == 1.0]
        return {
            "prompts": P, "weights": weights.tolist(), "front": rewards.nanmean(1).tolist(),
            "groups": {g: rewards[:, [i for i in range(P) if groups[i] == g]].nanmean(1).tolist() for g in sorted(set(groups))},
            "english": [sum(map(is_english, t)) / P for t in by_preference],
            "repeat_share": [repeat_share(t) for t in by_preference],
            "answers": {str(weights[m].tolist()): {"prompts": prompts, "answers": by_preference[m]} for m in corners},
        }

    def _warn_if_not_steerable(self, report: dict) -> None:
        if not report["steerable"]:
            rank_zero_warn(
                "ParetoEvalCallback: the policy is not steerable - the rank correlation between w_k and reward k "
                f"is <= 0.1 for some objective ({report['steerability']}), so the requested preference barely "
                "changes the rewards. Check that the preference conditioning reaches the policy, that the objectives "
                "conflict in what it writes (benchmarks/reachable_conflict.py), and that it does not repeat itself "
                "(the summary's distinct tokens); README 'When the policy does not steer'."
            )

    def state_dict(self) -> dict:
        """The initial and base fronts travel in the checkpoint, so a resumed run reports the same baselines."""
        return {"initial_rewards": self.initial_rewards, "initial_hypervolume": self.initial_hypervolume, "base": self.base}

    def load_state_dict(self, state_dict: dict) -> None:
        self.initial_rewards = state_dict.get("initial_rewards")
        self.initial_hypervolume = state_dict.get("initial_hypervolume")
        self.base = state_dict.get("base")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Before the warm start (the module's on_fit_start runs after the callbacks'): the untrained model's front and
        its answers to the held-out requests. Without a warm start the initial front is the base model's."""
        stage = getattr(pl_module, "warm_start", None)
        if (not self.base_front or self.initial_rewards is not None or getattr(pl_module, "restored", False)
                or stage is None or stage.steps <= 0):
            return
        weights, rewards, report = self._evaluate(trainer, pl_module)
        self.base = {"front": rewards.tolist(), "hypervolume": report["hypervolume"],
                     "steerability": report.get("steerability"), "requests": self._requests_report(pl_module)}
        self._last = None  # the initial front (after the warm start) is measured anew at the same step
        if trainer.is_global_zero:
            _log.info(f"base model (before the warm start): hypervolume {report['hypervolume']:.4f}")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse draws the module cannot average before the warm start, not minutes into the run."""
        per_prompt = ("evaluate_front_per_prompt", "evaluate_pwn_choice_per_prompt")
        if self.draws > 1 and not all(hasattr(pl_module, name) for name in per_prompt):
            raise ValueError(f"callbacks.pareto_eval.draws={self.draws} needs a module that answers per prompt "
                             f"({' and '.join(per_prompt)}); set draws=1")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate the policy the online phase starts from: the baseline that the hypervolume gain is measured against."""
        if self.initial_rewards is not None:  # resumed: the baseline came with the checkpoint
            return
        weights, rewards, report = self._evaluate(trainer, pl_module)
        self.initial_rewards, self.initial_hypervolume = rewards, report["hypervolume"]
        if self.base is None and self.base_front:  # no warm start: the policy the online phase starts from is the base
            self.base = {"front": rewards.tolist(), "hypervolume": report["hypervolume"],
                         "steerability": report.get("steerability"), "requests": self._requests_report(pl_module)}
        # No steerability warning here: an untrained policy is allowed to ignore the preference.
        self._log(trainer, pl_module, weights, rewards, report)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx
    ) -> None:
        step = trainer.global_step
        # global_step only moves on optimiser steps; the _last check skips batches that did not step. The
        # last step is left to on_train_end, which logs the front with the PWN's own point.
        if step == 0 or step % self.every_n_steps or (self._last is not None and self._last[0] == step):
            return
        if trainer.max_steps and trainer.max_steps > 0 and step >= trainer.max_steps:
            return
        weights, rewards, report = self._evaluate(trainer, pl_module)
        choice = self._pwn_choice(trainer, pl_module, rewards) if has_pwn(pl_module) else None
        self._log(trainer, pl_module, weights, rewards, report, choice)
        self._warn_if_not_steerable(report)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Final front, the PWN's own choice, and the report files (rank zero writes)."""
        already_logged = self._last is not None and self._last[0] == trainer.global_step
        weights, rewards, report = self._evaluate(trainer, pl_module)
        choice = self._pwn_choice(trainer, pl_module, rewards)
        learned = has_pwn(pl_module)  # ric/linear/soups have none: their "choice" is their static source's
        groups, _ = self._group_summary(pl_module, choice if learned else None)
        if not already_logged:
            self._log(trainer, pl_module, weights, rewards, report, choice if learned else None)
            self._warn_if_not_steerable(report)
        self.final_report = {
            **report,
            "step": trainer.global_step,
            "objective_names": list(pl_module.objective_names),
            "max_hypervolume": pl_module.max_hypervolume,
            "hypervolume_ratio": _ratio(report["hypervolume"], pl_module.max_hypervolume),
            "initial_hypervolume": self.initial_hypervolume,
            "initial_front": None if self.initial_rewards is None else self.initial_rewards.tolist(),
            "pwn_choice": {"weights": choice["weights"].tolist(), "rewards": choice["rewards"].tolist(),
                           "hypervolume_gain": choice["hypervolume_gain"]},
            "groups": groups,  # {} when the evaluation prompts name no groups
            "has_pwn": learned,
            "draws": self.draws,  # answers per prompt and preference behind every figure above
            "base": self.base,  # the untrained model under the same prompts and sampling (None: callbacks...base_front=false)
            "requests": self._requests_report(pl_module),  # held-out requests (None without requests)
        }
        if not trainer.is_global_zero:
            return
        out_dir = Path(trainer.default_root_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(out_dir / f"{self.filename}.json", self.final_report)
        extra = self._extra() | (_choice_points(choice, groups) if learned else {})
        plot_front(
            weights,
            rewards,
            pl_module.objective_names,
            pl_module.reference_point,
            out_dir / f"{self.filename}.png",
            extra,
        )


def read_requests(path: str) -> tuple[list[str], list[str]]:
    """(prompts, groups) from a JSON-lines file of {"prompt", "group"}; `shipped`: meal_pl/assets/heldout_requests.jsonl,
    32 everyday and 32 harmful single-question requests written apart from the training pool."""
    file = Path(__file__).resolve().parents[1] / "assets" / "heldout_requests.jsonl" if path == "shipped" else Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"callbacks.pareto_eval.requests={path}: no such file; give a JSON-lines file of "
                                '{"prompt": ..., "group": ...}, shipped, or null')
    records = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return [r["prompt"] for r in records], [r.get("group", "all") for r in records]


def _choice_points(choice: dict | None, groups: dict[str, dict]) -> dict[str, Tensor]:
    """The figure's PWN points: overall, and each group's mean under the PWN's own preferences."""
    if choice is None:
        return {}
    points = {"PWN choice": choice["rewards"]}
    points |= {f"PWN choice: {g}": torch.tensor(s["pwn_choice"]["rewards"]) for g, s in groups.items() if s.get("pwn_choice")}
    return points


def _eval_groups(trainer: pl.Trainer, pl_module: pl.LightningModule, n: int) -> list[str | None] | None:
    """The evaluation prompts' groups from the datamodule (or the module), None when neither provides them."""
    for source in (getattr(trainer, "datamodule", None), pl_module):
        if hasattr(source, "eval_groups"):
            return list(source.eval_groups(n))
    return None


def _eval_mode(pl_module: pl.LightningModule, fn, *args):
    """fn(*args) in eval mode without grads, the module's train/eval mode restored afterwards."""
    was_training = pl_module.training
    pl_module.eval()
    try:
        with torch.no_grad():
            return fn(*args)
    finally:
        pl_module.train(was_training)


def _ratio(hypervolume: float, max_hypervolume: float | None) -> float | None:
    """Achieved / analytic maximum hypervolume, the synthetic objective's headline number."""
    return None if not max_hypervolume else hypervolume / max_hypervolume


def _write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temp file in the same directory, then rename: readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
