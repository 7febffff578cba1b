"""How much of a quick bench's seed-to-seed hypervolume spread is the evaluation's own sampling noise.

    python benchmarks/eval_noise.py                          # ric on synthetic_prompted, 3 training seeds
    python benchmarks/eval_noise.py --method meal_frozen --objective synthetic --seeds 3 --repeats 5

Each training seed: one run composed as `python -m meal_pl.bench bench.quick=true` composes it (one thread; the
held-out set enlarged to the largest --sizes so that every size takes its first n prompts), then the final
policy's front evaluated --repeats times with different evaluation seeds (`algorithm.eval_seed`) on the first n
held-out prompts for each n of --sizes. Reports, per n: the evaluation's own spread (sd over evaluation seeds
of one policy, averaged over training seeds), the spread over training seeds of the evaluation-averaged
hypervolume, and the spread a bench cell sees (one evaluation per training seed). Prints the table, writes
eval_noise.json to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from common import NO_EVAL, quick_config

from meal_pl.pareto import front_report, simplex_grid
from meal_pl.train import build_run


def front_hypervolumes(module, prompts: list[str], seeds: list[int]) -> list[float]:
    """The hypervolume of the module's front on `prompts`, once per evaluation seed."""
    grid = simplex_grid(len(module.objective_names), module.grid_points).to(module.device)
    out = []
    module.eval()
    for seed in seeds:
        module.eval_seed = seed
        with torch.no_grad():
            rewards = module.evaluate_front(prompts, grid).float().cpu()
        out.append(front_report(grid.cpu(), rewards, module.objective_names, module.reference_point)["hypervolume"])
    return out


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="ric")
    parser.add_argument("--objective", default="synthetic_prompted")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..n-1")
    parser.add_argument("--repeats", type=int, default=5, help="evaluation seeds per policy")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64], help="held-out prompts per evaluation")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="eval_noise_"))
    out.mkdir(parents=True, exist_ok=True)
    eval_seeds = [1234 + r for r in range(args.repeats)]
    hv: dict[int, list[list[float]]] = {n: [] for n in args.sizes}  # n -> [training seed][evaluation seed]
    for seed in range(args.seeds):
        overrides = [f"objective={args.objective}", f"seed={seed}", f"data.eval_size={max(args.sizes)}", *NO_EVAL]
        datamodule, module, trainer = build_run(quick_config(args.method, overrides, out / f"seed{seed}"))
        trainer.fit(module, datamodule=datamodule)
        for n in args.sizes:
            hv[n].append(front_hypervolumes(module, datamodule.eval_prompts(n), eval_seeds))
    rows = []
    for n, runs in hv.items():
        rows.append({
            "prompts": n,
            "mean_hypervolume": statistics.fmean(v for run in runs for v in run),
            "evaluation_sd": statistics.fmean(sd(run) for run in runs),
            "training_sd": sd([statistics.fmean(run) for run in runs]),
            "bench_cell_sd": sd([run[0] for run in runs]),  # the bench evaluates once, at the first seed
            "hypervolumes": runs,
        })
    print(f"{args.method} on {args.objective}, quick sizes; {args.seeds} training seeds x {args.repeats} evaluation seeds")
    print("| held-out prompts | mean HV | sd over evaluation seeds (one policy) | sd over training seeds (eval-averaged) | sd of one evaluation per seed (a bench cell) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['prompts']} | {r['mean_hypervolume']:.4f} | {r['evaluation_sd']:.4f} | {r['training_sd']:.4f} | {r['bench_cell_sd']:.4f} |")
    (out / "eval_noise.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    print(f"wrote {out / 'eval_noise.json'}")


if __name__ == "__main__":
    main()
