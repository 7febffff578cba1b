"""Do the objectives conflict within what a trained policy writes? A policy can only be steered along a trade-off
its own samples contain.

    python benchmarks/reachable_conflict.py                             # the default objective's data alone
    python benchmarks/reachable_conflict.py -o objective=helpful_profanity   # another objective (train overrides)
    python benchmarks/reachable_conflict.py RUN_DIR                     # a run directory or a .ckpt
    python benchmarks/reachable_conflict.py RUN_DIR --samples 4 --points 3 --out DIR

Without RUN_DIR: the data's own responses (chosen and rejected, every prompt) scored by the objective's rewards, per
prompt group and over all; no policy. Writes reachable_conflict.json to --out (default outputs/reachable_conflict/).

Loads the run's checkpoint, answers its held-out prompts --samples times (evaluation seeds 1234, 1235, ...)
under each of --points preferences on the simplex grid, and scores every response. Reports, per preference,
the mean raw rewards and the share of distinct tokens per response (near 0: the policy repeats itself); over
all responses, the correlation between each pair of objectives; and, for each pair (i, j), the mean of
objective i among the responses in the bottom and top quartile of objective j: when the responses worst on j
are the best on i, the two conflict in what the policy writes, and conditioning has a trade to learn. The same
per prompt group, and within prompt (each prompt's answers centred on their own mean: the trade-off among one
prompt's answers, which is what rejection sampling selects along). The same
two statistics of the data's own responses (the warm start's (prompt, response) pairs) say what a policy that
wrote like the data could trade. Prints the table, writes reachable_conflict.json to --out (default: the run
directory).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meal_pl.pareto import simplex_grid  # noqa: E402
from meal_pl.restore import find_checkpoint, load_run  # noqa: E402
from meal_pl.rewards import RewardSet  # noqa: E402
from meal_pl.runs import CONF_DIR  # noqa: E402
from meal_pl.step_metrics import distinct_token_share  # noqa: E402


def sample_rewards(module, prompts: list[str], weights: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw rewards (M, samples * P, K), distinct-token shares (M, samples * P)): `samples` responses per prompt
    under each preference of `weights`, as the evaluation draws them (evaluation seeds 1234, 1235, ...)."""
    M, P = len(weights), len(prompts)
    rewards, distinct = [], []
    for r in range(samples):
        module.eval_seed = 1234 + r
        texts = module.respond(prompts * M, weights.repeat_interleave(P, 0))
        rewards.append(module.rewards(prompts * M, texts).float().cpu().view(M, P, -1))
        enc = module.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        distinct.append(distinct_token_share(enc["input_ids"], enc["attention_mask"]).view(M, P))
    return torch.cat(rewards, 1), torch.cat(distinct, 1)


def quartile_means(rewards: torch.Tensor) -> dict[str, dict[str, list[float]]]:
    """{i: {j: [mean r_i where r_j <= its 25th percentile, mean r_i where r_j >= its 75th]}} over (S, K) rewards."""
    lo, hi = rewards.quantile(0.25, dim=0), rewards.quantile(0.75, dim=0)
    K = rewards.shape[1]
    return {i: {j: [rewards[rewards[:, j] <= lo[j], i].mean().item(), rewards[rewards[:, j] >= hi[j], i].mean().item()]
                for j in range(K) if j != i} for i in range(K)}


def conflict(rewards: torch.Tensor, names: list[str]) -> dict:
    """Correlation matrix and quartile means (by objective name) of (S, K) raw rewards, invalid rows dropped."""
    rewards = rewards[torch.isfinite(rewards).all(-1)]
    quart = quartile_means(rewards)
    return {"responses": len(rewards), "mean": rewards.mean(0).tolist(), "correlation": torch.corrcoef(rewards.T).tolist(),
            "quartile_means": {names[i]: {names[j]: v for j, v in d.items()} for i, d in quart.items()}}


def within_prompt(rewards: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
    """(S, K) rewards minus their prompt's mean reward: what is left is the trade-off among one prompt's own answers,
    the only one rejection sampling can select along (across prompts, one prompt's easier than another)."""
    centred = rewards.clone()
    for p in prompt_ids.unique():
        rows = prompt_ids == p
        centred[rows] = rewards[rows] - rewards[rows].nanmean(0)
    return centred


def policy_conflicts(rewards: torch.Tensor, prompts: list[str], groups: dict, names: list[str]) -> dict:
    """conflict() over all of a policy's (M, samples * P, K) answers, per prompt group, and within prompt (each
    prompt's answers centred on their mean), per group too."""
    P, K = len(prompts), rewards.shape[-1]
    flat = rewards.reshape(-1, K)
    prompt_ids = torch.arange(flat.shape[0]) % P  # the answers are laid out sample-major, prompt-minor per preference
    centred = within_prompt(flat, prompt_ids)
    report = {"all": conflict(flat, names), "within_prompt": conflict(centred, names)}
    prompt_groups = [groups.get(p) for p in prompts]
    for group in sorted({g for g in prompt_groups if g is not None}):
        rows = torch.tensor([prompt_groups[i] == group for i in prompt_ids.tolist()])
        report.setdefault("groups", {})[group] = {"all": conflict(flat[rows], names),
                                                  "within_prompt": conflict(centred[rows], names)}
    return report


def data_report(overrides: list[str]) -> dict:
    """The conflict within the data's own responses, per prompt group and over all, under `overrides` of train."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    rewards = RewardSet(instantiate(cfg.objective.rewards))
    names = list(rewards.names)
    pairs = [(p, r) for p, responses in datamodule.responses.items() for r in responses]
    raw = rewards([p for p, _ in pairs], [r for _, r in pairs]).float().cpu()
    groups = [datamodule.groups.get(p) for p, _ in pairs]
    report = {"objective": cfg.objective.name, "objectives": names, "overrides": overrides, "all": conflict(raw, names)}
    for group in sorted({g for g in groups if g is not None}):
        rows = torch.tensor([g == group for g in groups])
        report.setdefault("groups", {})[group] = conflict(raw[rows], names)
    return report


def print_data_report(report: dict) -> None:
    names = report["objectives"]
    print(f"objective {report['objective']}: the data's own responses (no policy)")
    print("| prompts | responses | " + " | ".join(f"mean {n}" for n in names) + " | correlation | "
          + f"{names[0]} among the worst / best on {names[1]} |")
    print("|---|---|" + "---|" * (len(names) + 2))
    for label, stats in [("all", report["all"]), *report.get("groups", {}).items()]:
        low, high = stats["quartile_means"][names[0]][names[1]]
        print(f"| {label} | {stats['responses']} | " + " | ".join(f"{x:.3f}" for x in stats["mean"])
              + f" | {stats['correlation'][0][1]:.3f} | {low:.3f} / {high:.3f} |")


def print_report(report: dict) -> None:
    names = report["objectives"]
    print(f"{report['prompts']} held-out prompts x {report['samples']} samples per preference; {report['checkpoint']}")
    print("| preference | " + " | ".join(f"mean {n}" for n in names) + " | distinct tokens |")
    print("|---|" + "---|" * (len(names) + 1))
    for row in report["per_preference"]:
        w = ", ".join(f"{x:.2f}" for x in row["preference"])
        print(f"| ({w}) | " + " | ".join(f"{x:.3f}" for x in row["mean"]) + f" | {row['distinct_tokens']:.2f} |")
    for source in ("policy", "data"):
        stats = report[source]
        for i, by_j in stats["quartile_means"].items():
            for j, (low, high) in by_j.items():
                print(f"{source}: {i} among the responses worst / best on {j}: {low:.3f} / {high:.3f} "
                      f"(correlation {stats['correlation'][names.index(i)][names.index(j)]:.3f})")
    by_group = report["policy_by_group"]
    print(f"| the policy's answers | responses | correlation | within prompt | {names[0]} among the worst / best on "
          f"{names[1]}, within prompt |")
    print("|---|---|---|---|---|")
    for label, stats in [("all", by_group), *by_group.get("groups", {}).items()]:
        low, high = stats["within_prompt"]["quartile_means"][names[0]][names[1]]
        print(f"| {label} | {stats['all']['responses']} | {stats['all']['correlation'][0][1]:.3f} | "
              f"{stats['within_prompt']['correlation'][0][1]:.3f} | {low:+.3f} / {high:+.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", help="a run directory (its checkpoints/last.ckpt) or a .ckpt file; "
                        "without it, the data's own responses alone")
    parser.add_argument("-o", "--override", action="append", default=[],
                        help="without RUN: a train config override (repeatable), e.g. -o objective=helpful_profanity")
    parser.add_argument("--samples", type=int, default=4, help="responses per prompt and preference")
    parser.add_argument("--points", type=int, default=3, help="preferences: the simplex grid of this many points")
    parser.add_argument("--prompts", type=int, default=32, help="the first n held-out prompts")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.run is None:
        report = data_report(args.override)
        print_data_report(report)
        out = args.out or Path("outputs") / "reachable_conflict"
        out.mkdir(parents=True, exist_ok=True)
        (out / "reachable_conflict.json").write_text(json.dumps(report, indent=1))
        print(f"wrote {out / 'reachable_conflict.json'}")
        return
    checkpoint, run_dir = find_checkpoint(args.run)
    module, datamodule, _ = load_run(args.run)
    datamodule.setup("fit")
    prompts = datamodule.eval_prompts(args.prompts)
    names = list(module.objective_names)
    grid = simplex_grid(len(names), args.points)
    rewards, distinct = sample_rewards(module, prompts, grid.to(module.device), args.samples)  # (M, S, K), (M, S)
    pairs = datamodule.sft_pairs()
    data = module.rewards([p for p, _ in pairs], [r for _, r in pairs]).float().cpu()
    report = {
        "checkpoint": str(checkpoint), "objectives": names, "prompts": len(prompts), "samples": args.samples,
        "per_preference": [{"preference": w.tolist(), "mean": rewards[m].nanmean(0).tolist(),
                            "distinct_tokens": distinct[m].mean().item()} for m, w in enumerate(grid)],
        "policy": conflict(rewards.reshape(-1, len(names)), names),
        "data": conflict(data, names),
        "policy_by_group": policy_conflicts(rewards, prompts, datamodule.groups, names),
    }
    print_report(report)
    out = args.out or run_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "reachable_conflict.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'reachable_conflict.json'}")


if __name__ == "__main__":
    main()
