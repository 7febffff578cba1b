"""Evaluate a checkpoint's Pareto front on the run's held-out prompts: pareto.json and pareto.png.

    python -m meal_pl.evaluate ckpt_path=RUN/checkpoints/last.ckpt [out=DIR] [num_prompts=32] [num_points=11]
    python -m meal_pl.evaluate ckpt_path=RUN draws=5     # each prompt answered 5 times per preference (the run's eval_seed and the next 4)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import meal_pl  # noqa: F401  (python -m meal_pl.<command> sets the offline default before transformers is imported)
from meal_pl.callbacks.pareto_eval import _choice_points, _ratio, _write_json_atomic
from meal_pl.callbacks.summary import steerability_text
from meal_pl.evaluation import front_over_draws, pwn_choice_over_draws
from meal_pl.pareto import front_report, hypervolume_gain, per_group_summary, plot_front, simplex_grid
from meal_pl.precision import use_run_precision
from meal_pl.ranges import check_integer
from meal_pl.restore import find_checkpoint, load_run, parse_args, run_cli


@dataclass
class EvaluateArgs:
    ckpt_path: str | None = None  # a .ckpt file, or a run directory (its checkpoints/last.ckpt)
    out: str | None = None  # null: <run dir>/evaluate/<checkpoint name>/
    num_prompts: int = 32  # the first n of the run's held-out evaluation prompts
    num_points: int | None = None  # preference grid size; null: the objective's grid_points
    device: str = "auto"  # auto (a GPU where torch sees one, else cpu), cpu, cuda or cuda:N
    judge: str | None = None  # OBJECTIVE=DIR: score that objective with another reward model (e.g. harmless=rm/)
    seed: int | None = None  # sampling seed; null: the run's algorithm.eval_seed (another seed redraws every answer)
    draws: int = 1  # answers per prompt and preference, under seeds seed, seed+1, ...; each prompt's rewards averaged


def evaluate(module, prompts: list[str], num_points: int, groups: list[str | None] | None = None, draws: int = 1
             ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(grid weights, mean raw rewards, report): the same measurement as training's final evaluation, the PWN's own
    per-prompt choice (`preference=auto`) and the hypervolume it adds to the grid's front included, per group too;
    with draws > 1, every prompt answered `draws` times per preference (meal_pl/evaluation.py; both under no_grad)."""
    names = module.objective_names
    weights = simplex_grid(len(names), num_points)
    per_prompt = front_over_draws(module, prompts, weights.to(module.device), draws).float().cpu()  # (M,P,K)
    pwn_weights, pwn_rewards = pwn_choice_over_draws(module, prompts, draws)  # (P,K) each
    rewards = per_prompt.nanmean(1)
    report = front_report(weights, rewards, names, module.reference_point, per_prompt)
    choice = pwn_rewards.nanmean(0)
    report |= {
        "objective_names": list(names),
        "max_hypervolume": module.max_hypervolume,
        "hypervolume_ratio": _ratio(report["hypervolume"], module.max_hypervolume),
        "num_prompts": len(prompts),
        "pwn_choice": {"weights": pwn_weights.mean(0).tolist(), "rewards": choice.tolist(),
                       "hypervolume_gain": hypervolume_gain(rewards, choice, module.reference_point)},
        "groups": per_group_summary(groups, pwn_weights, per_prompt, module.reference_point, module.max_hypervolume,
                                    pwn_rewards) if groups and any(g is not None for g in groups) else {},
    }
    return weights, rewards, report


def parse_judge(judge: str | None) -> dict[str, str]:
    """{objective: reward-model directory} from `judge=harmless=DIR` (a policy judged by a model it never trained on)."""
    if judge is None:
        return {}
    name, sep, path = judge.partition("=")
    if not sep or not name or not Path(path).is_dir():
        raise ValueError(f"judge={judge!r} must be OBJECTIVE=DIR with DIR a reward-model directory "
                         "(e.g. judge=harmless=meal_pl/assets/harm_reward_model)")
    return {name: str(Path(path).resolve())}


def main(argv: list[str]) -> None:
    args = parse_args(argv, EvaluateArgs(), required=("ckpt_path",))
    check_integer("num_prompts", args.num_prompts, 1)
    check_integer("draws", args.draws, 1, " (answers per prompt and preference)")
    if args.num_points is not None:
        check_integer("num_points", args.num_points, 2, ", or null for the objective's grid_points")
    judge = parse_judge(args.judge)
    ckpt, run = find_checkpoint(args.ckpt_path)
    out = Path(args.out) if args.out else run / "evaluate" / (ckpt.stem + ("_judged" if judge else ""))
    module, datamodule, cfg = load_run(args.ckpt_path, args.device, judge)
    precision = use_run_precision(module, cfg, module.device)  # the run's own evaluation: bf16 where it trained so
    if args.seed is not None:
        module.eval_seed = args.seed
    prompts = datamodule.eval_prompts(args.num_prompts)
    weights, rewards, report = evaluate(module, prompts, args.num_points or module.grid_points,
                                        datamodule.eval_groups(args.num_prompts), args.draws)
    report |= {"ckpt_path": str(ckpt), "precision": precision, "judge": judge, "eval_seed": module.eval_seed,
               "draws": args.draws}
    out.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(out / "pareto.json", report)
    choice = {"rewards": torch.tensor(report["pwn_choice"]["rewards"])}
    extra = _choice_points(choice, report["groups"])
    plot_front(weights, rewards, module.objective_names, module.reference_point, out / "pareto.png", extra)
    ratio = f" ({report['hypervolume_ratio']:.3f} of the analytic maximum)" if report["hypervolume_ratio"] else ""
    print(f"hypervolume {report['hypervolume']:.4f}{ratio} on {len(prompts)} prompts x {args.draws} draw(s); the PWN's own choice adds "
          f"{report['pwn_choice']['hypervolume_gain']:.4f}; steerability {steerability_text(report)}; "
          f"wrote {out / 'pareto.json'} and pareto.png")


if __name__ == "__main__":
    run_cli(main, EvaluateArgs)
