"""The premise of objective=synthetic_prompted, measured before any method trains: after the warm start, does the
policy lean to objective A on family-a prompts and to B on family-b prompts?

    python benchmarks/prompted_premise.py                              # warm start 40 / 150 / 400 steps, seeds 0 1
    python benchmarks/prompted_premise.py --warm-start 400 --seeds 0 1 2
    python benchmarks/prompted_premise.py --objective synthetic3_prompted --warm-start 400   # K families: shares per family

Each (warm-start length, seed): the bench's quick `ric` config (`python -m meal_pl.bench bench.quick=true` composes
it, one thread) on `objective=synthetic_prompted` with `objective.warm_start_steps` set, the warm start alone (no
policy step), then one sampled response per held-out prompt (the first 16, families in turn) under w = (1, 0),
(0.5, 0.5) and (0, 1); the a-m share a / (a + b) of the two rewards, per family. A lean shows as family a's share
above family b's at every w. Prints the table, writes prompted_premise.json and .md to --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from common import quick_config

from meal_pl.train import build_run

PREFERENCES = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]


def warm_started_rewards(objective: str, warm_start: int, seed: int, out: Path, preferences: list[list[float]] | None,
                         prompts: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """Raw rewards (M,P,K) of the warm-started policy on the first held-out prompts, their groups, the objectives."""
    extra = [f"objective={objective}", f"objective.warm_start_steps={warm_start}", f"seed={seed}"]
    cfg = quick_config("ric", extra, out / f"ws{warm_start}_seed{seed}")
    torch.manual_seed(seed)
    datamodule, module, _ = build_run(cfg)
    datamodule.setup("fit")
    module.warm_start.prepare(module, datamodule)  # the data's answers, batches in the order of seed 0
    held_out = datamodule.eval_prompts()[:prompts]
    K = len(module.objective_names)
    weights = torch.tensor(preferences) if preferences else torch.cat([torch.eye(K), torch.full((1, K), 1.0 / K)])
    torch.manual_seed(module.eval_seed)
    rewards = module.evaluate_front_per_prompt(held_out, weights)
    return rewards, [datamodule.groups[p] for p in held_out], list(module.objective_names)


def family_mix(objective: str, warm_start: int, seed: int, out: Path, prompts: int = 18) -> list[dict]:
    """K objectives: each family's mean reward shares r_k / sum r over w = e_1..e_K and uniform."""
    rewards, groups, names = warm_started_rewards(objective, warm_start, seed, out, None, prompts)
    share = rewards / rewards.sum(-1, keepdim=True).clamp(min=1e-6)  # (M,P,K)
    rows = []
    for family in sorted(set(groups)):
        mask = torch.tensor([g == family for g in groups])
        rows.append({"warm_start_steps": warm_start, "seed": seed, "family": family, "objectives": names,
                     "share": [round(float(x), 3) for x in share[:, mask].mean((0, 1))]})
    return rows


def family_shares(warm_start: int, seed: int, out: Path, prompts: int = 16) -> dict:
    """The a-m share per family (mean, and per preference) of the policy right after the warm start."""
    rewards, groups, _ = warm_started_rewards("synthetic_prompted", warm_start, seed, out, PREFERENCES, prompts)
    held_out = groups
    share = rewards[..., 0] / (rewards[..., 0] + rewards[..., 1]).clamp(min=1e-6)
    row = {"warm_start_steps": warm_start, "seed": seed}
    for family in ("a", "b"):
        mask = torch.tensor([g == family for g in held_out])
        row[family] = float(share[:, mask].mean())
        row[f"{family}_per_w"] = [round(float(x), 3) for x in share[:, mask].mean(1)]
    row["lean"] = row["a"] - row["b"]
    return row


def markdown(rows: list[dict]) -> str:
    head = "| warm-start steps | seed | a-m share, family a | family b | lean (a - b) | family a at w=(1,0) / (.5,.5) / (0,1) | family b |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        per = [" / ".join(f"{x:.2f}" for x in r[f"{f}_per_w"]) for f in ("a", "b")]
        lines.append(f"| {r['warm_start_steps']} | {r['seed']} | {r['a']:.2f} | {r['b']:.2f} | {r['lean']:+.2f} | {per[0]} | {per[1]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm-start", type=int, nargs="+", default=[40, 150, 400])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--objective", default="synthetic_prompted",
                        help="synthetic_prompted (the a-m share table) or a K-family one, e.g. synthetic3_prompted")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="prompted_premise_"))
    out.mkdir(parents=True, exist_ok=True)
    if args.objective == "synthetic_prompted":
        rows = [family_shares(ws, seed, out) for ws in args.warm_start for seed in args.seeds]
        table = markdown(rows)
    else:
        rows = [r for ws in args.warm_start for seed in args.seeds for r in family_mix(args.objective, ws, seed, out)]
        names = rows[0]["objectives"]
        lines = [f"| warm-start steps | seed | family | reward shares {' / '.join(names)} (mean over w = corners and uniform) |",
                 "|---|---|---|---|"]
        lines += [f"| {r['warm_start_steps']} | {r['seed']} | {r['family']} | {' / '.join(f'{x:.2f}' for x in r['share'])} |" for r in rows]
        table = "\n".join(lines)
    print(table)
    (out / "prompted_premise.json").write_text(json.dumps(rows, indent=2))
    (out / "prompted_premise.md").write_text(table + "\n")
    print(f"wrote {out / 'prompted_premise.json'}, prompted_premise.md")


if __name__ == "__main__":
    main()
