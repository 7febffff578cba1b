"""Evaluate a checkpoint's Pareto front on the run's held-out prompts: pareto.json and pareto.png.

    python -m meal_pl.evaluate ckpt_path=RUN/checkpoints/last.ckpt [out=DIR] [num_prompts=32] [num_points=11]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import meal_pl  # noqa: F401  (offline default before transformers is imported)
from meal_pl.callbacks.pareto_eval import _ratio, _write_json_atomic
from meal_pl.pareto import front_report, plot_front, simplex_grid
from meal_pl.restore import find_checkpoint, load_run, parse_args, run_cli


@dataclass
class EvaluateArgs:
    ckpt_path: str | None = None  # a .ckpt file, or a run directory (its checkpoints/last.ckpt)
    out: str | None = None  # null: <run dir>/evaluate/<checkpoint name>/
    num_prompts: int = 32  # the first n of the run's held-out evaluation prompts
    num_points: int | None = None  # preference grid size; null: the objective's grid_points
    device: str = "cpu"


def evaluate(module, prompts: list[str], num_points: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(grid weights, mean raw rewards, report): the same measurement as training's final evaluation."""
    names = module.objective_names
    weights = simplex_grid(len(names), num_points)
    with torch.no_grad():
        rewards = module.evaluate_front(prompts, weights.to(module.device)).float().cpu()
        pwn_weights, pwn_rewards = module.evaluate_pwn_choice(prompts)
    report = front_report(weights, rewards, names, module.reference_point)
    report |= {
        "objective_names": list(names),
        "max_hypervolume": module.max_hypervolume,
        "hypervolume_ratio": _ratio(report["hypervolume"], module.max_hypervolume),
        "num_prompts": len(prompts),
        "pwn_choice": {"weights": pwn_weights.float().cpu().tolist(), "rewards": pwn_rewards.float().cpu().tolist()},
    }
    return weights, rewards, report


def main(argv: list[str]) -> None:
    args = parse_args(argv, EvaluateArgs(), required=("ckpt_path",))
    if args.num_prompts < 1 or (args.num_points is not None and args.num_points < 2):
        raise ValueError(f"num_prompts={args.num_prompts} must be >= 1 and num_points={args.num_points} >= 2")
    ckpt, run = find_checkpoint(args.ckpt_path)
    out = Path(args.out) if args.out else run / "evaluate" / ckpt.stem
    module, datamodule, _ = load_run(args.ckpt_path, args.device)
    prompts = datamodule.eval_prompts(args.num_prompts)
    weights, rewards, report = evaluate(module, prompts, args.num_points or module.grid_points)
    report["ckpt_path"] = str(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(out / "pareto.json", report)
    extra = {"PWN choice": torch.tensor(report["pwn_choice"]["rewards"])}
    plot_front(weights, rewards, module.objective_names, module.reference_point, out / "pareto.png", extra)
    ratio = f" ({report['hypervolume_ratio']:.3f} of the analytic maximum)" if report["hypervolume_ratio"] else ""
    print(f"hypervolume {report['hypervolume']:.4f}{ratio} on {len(prompts)} prompts; wrote {out / 'pareto.json'} and pareto.png")


if __name__ == "__main__":
    run_cli(main, EvaluateArgs)
