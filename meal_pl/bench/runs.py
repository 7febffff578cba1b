"""One method at one seed: fit its policies and return its front, timings and sample count.

single (meal, ric, ...): one policy, its front over the evaluation grid, as ParetoEvalCallback reports it.
linear: one unconditioned policy per grid vector, each evaluated at its own vector; the front is those points.
soups: one unconditioned policy per objective; the front is their weight interpolation at every grid vector.
All fronts are scored by the same `front_report` on the same held-out prompts, each prompt answered
`callbacks.pareto_eval.draws` times per preference (sampling seeds eval_seed, +1, ...) for every method alike.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from omegaconf import DictConfig, open_dict
from torch import Tensor

from meal_pl.callbacks.pareto_eval import ParetoEvalCallback
from meal_pl.callbacks.step_timer import StepTimer
from meal_pl.evaluation import front_over_draws
from meal_pl.module import MealModule
from meal_pl.pareto import front_report, simplex_grid
from meal_pl.train import build_run


def fit(cfg: DictConfig, warmup_steps: int = 2) -> tuple[MealModule, L.Trainer, dict]:
    """Build and fit one run; timings leave out the first `warmup_steps` steps (lazy set-up)."""
    start = time.perf_counter()
    datamodule, module, trainer = build_run(cfg)
    timer = next((c for c in trainer.callbacks if isinstance(c, StepTimer)), None)
    if timer is None:
        raise ValueError("the benchmark needs callbacks.step_timer (meal_pl.callbacks.step_timer.StepTimer)")
    trainer.fit(module, datamodule=datamodule)
    skip = warmup_steps if len(timer.wall) > warmup_steps else 0
    B, N = cfg.data.batch_size, cfg.algorithm.sampler.num_samples
    stats = {
        "steps": trainer.global_step,
        "samples": trainer.global_step * B * N,
        "run_time": time.perf_counter() - start,
        "step_wall": timer.wall[skip:],
        "step_cpu": timer.cpu[skip:],
        "tokens_per_s": timer.tokens_per_s[skip:],
        "policy_loss": timer.policy_loss,  # every step: the tests check that it falls
    }
    return module, trainer, stats


def eval_settings(cfg: DictConfig) -> tuple[int, int | None, int]:
    """(num_prompts, num_points, draws) of the Pareto evaluation, read before the callback is dropped."""
    pe = cfg.callbacks.get("pareto_eval") or {}
    return int(pe.get("num_prompts", 32)), pe.get("num_points"), int(pe.get("draws", 1))


def without_pareto_eval(cfg: DictConfig) -> DictConfig:
    """A copy of cfg without the in-training Pareto evaluation (linear and soups evaluate afterwards)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.callbacks.pop("pareto_eval", None)
    return cfg


@torch.no_grad()
def evaluate(module: MealModule, prompts: list[str], weights: Tensor, draws: int = 1) -> Tensor:
    """Mean raw rewards (M,K) at each preference, in eval mode, each prompt's averaged over `draws` answers: the
    callback's own evaluation."""
    module.eval()
    return front_over_draws(module, prompts, weights.to(module.device), draws).nanmean(1).float().cpu()


def merge_stats(parts: list[dict]) -> dict:
    """Timings and samples of several policies that make one front."""
    keys = ("step_wall", "step_cpu", "tokens_per_s", "policy_loss")
    return {
        "steps": sum(p["steps"] for p in parts),
        "samples": sum(p["samples"] for p in parts),
        "run_time": sum(p["run_time"] for p in parts),
        "policies": len(parts),
        **{k: [v for p in parts for v in p[k]] for k in keys},
        "policy_loss_per_run": [p["policy_loss"] for p in parts],
    }


def run_single(cfg: DictConfig, warmup_steps: int = 2) -> dict:
    """One preference-conditioned policy (meal, ric, ...): the front the Pareto callback reports."""
    module, trainer, stats = fit(cfg, warmup_steps)
    callback = next((c for c in trainer.callbacks if isinstance(c, ParetoEvalCallback)), None)
    if callback is None or callback.final_report is None:
        raise ValueError("a single-policy method needs callbacks.pareto_eval for its front")
    report = dict(callback.final_report)
    learnable = getattr(module.pwn, "learnable", False)
    report["pwn_choice"] = report["pwn_choice"] if learnable else None  # a static source has no choice of its own
    if not learnable:  # per prompt group too: keep the hypervolumes, drop the weights of a source that does not choose
        report["groups"] = {g: {**entry, "pwn_weights": None} for g, entry in (report.get("groups") or {}).items()}
    return {"front": report, **merge_stats([stats])}


def run_linear(cfgs: list[DictConfig], warmup_steps: int = 2) -> dict:
    """Linear scalarisation: cfgs[i] trains at its fixed vector algorithm.pwn.weights; one point each."""
    weights, points, parts, module = [], [], [], None
    for cfg in cfgs:
        num_prompts, _, draws = eval_settings(cfg)
        module, _, stats = fit(without_pareto_eval(cfg), warmup_steps)
        w = torch.tensor([list(cfg.algorithm.pwn.weights)], dtype=torch.float32)
        points.append(evaluate(module, module.eval_prompts(num_prompts), w, draws)[0])
        weights.append(w[0])
        parts.append(stats)
    return {"front": report_for(module, torch.stack(weights), torch.stack(points)), **merge_stats(parts)}


def run_soups(cfgs: list[DictConfig], warmup_steps: int = 2) -> dict:
    """Rewarded soups: cfgs[k] trains objective k's policy; theta(w) = sum_k w_k theta_k on the grid."""
    states, parts, module, init = [], [], None, None
    for cfg in cfgs:
        num_prompts, num_points, draws = eval_settings(cfg)
        module, _, stats = fit(without_pareto_eval(cfg), warmup_steps)
        # Interpolation needs one shared start: pi_ref is each ingredient's initial (warm-started) policy.
        ref = {k: v.detach().clone() for k, v in module.ref.state_dict().items()}
        if init is not None and any(not torch.equal(ref[k], init[k]) for k in init):
            raise RuntimeError("rewarded soups: the ingredients did not start from the same policy")
        init = ref
        states.append({k: v.detach().clone() for k, v in module.policy.state_dict().items()})
        parts.append(stats)
    K = len(module.objective_names)
    grid = simplex_grid(K, num_points or module.grid_points)
    prompts = module.eval_prompts(num_prompts)
    points = []
    for w in grid:
        soup = {k: sum(float(w[i]) * states[i][k].float() for i in range(K)).to(states[0][k].dtype) for k in states[0]}
        module.policy.load_state_dict(soup)
        points.append(evaluate(module, prompts, w[None], draws)[0])
    return {"front": report_for(module, grid, torch.stack(points)), **merge_stats(parts)}


def report_for(module: MealModule, weights: Tensor, rewards: Tensor) -> dict:
    """front_report plus the fields ParetoEvalCallback adds, so every method's front reads alike."""
    report = front_report(weights, rewards, module.objective_names, module.reference_point)
    best = module.max_hypervolume
    report |= {
        "objective_names": list(module.objective_names),
        "max_hypervolume": best,
        "hypervolume_ratio": report["hypervolume"] / best if best else None,
        "pwn_choice": None,
    }
    return report
