"""Saved answers under other harm reward models: does a new model still pay for what a policy hacked the old one with?

    python benchmarks/score_generations.py --models meal_pl/assets/harm_reward_model outputs/rm_repeat \
        --files docs/data/smollm2_bf16_seed0_generations.json [...]

Per `generations.json` (what a run's generations callback wrote: prompts, and per preference tag an answer): the
answers' mean share of distinct word pairs (a loop scores low) and their mean score under each reward-model directory
(`python -m meal_pl.reward_model` heads). Prints the table, writes score_generations.json (with each answer's scores)
and .md to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from meal_pl.rewards.preference_head import PreferenceHeadReward
from meal_pl.rewards.relevance import distinct_bigram_share


def answers(path: Path) -> tuple[list[str], list[str]]:
    """(prompts, answers) of a generations.json, one pair per (prompt, preference)."""
    samples = json.loads(path.read_text())["samples"]
    pairs = [(s["prompt"], answer) for s in samples for answer in s["responses"].values()]
    return [p for p, _ in pairs], [a for _, a in pairs]


def score_file(path: Path, models: dict[str, PreferenceHeadReward]) -> dict:
    prompts, texts = answers(path)
    row = {"file": path.name, "answers": len(texts),
           "distinct_pairs": sum(distinct_bigram_share(t) for t in texts) / len(texts)}
    per_answer = [{"prompt": p, "answer": t} for p, t in zip(prompts, texts)]
    for name, reward in models.items():
        scores = [float(x) for x in reward(prompts, texts)]
        row[name] = sum(scores) / len(scores)
        for entry, score in zip(per_answer, scores):
            entry[name] = score
    return row | {"per_answer": per_answer}  # JSON only: which answers a model pays for, not just the mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="reward-model directories (reward_head.json)")
    parser.add_argument("--files", nargs="+", required=True, type=Path, help="generations.json files")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()
    from common import write_report  # here, not at import: common sets the thread count for timed benchmarks

    models = {name: PreferenceHeadReward(name) for name in args.models}
    rows = [score_file(path, models) for path in args.files]
    lines = ["| generations | answers | distinct word pairs | " + " | ".join(models) + " |",
             "|---|---|---|" + "---|" * len(models)]
    lines += [f"| {r['file']} | {r['answers']} | {r['distinct_pairs']:.2f} | "
              + " | ".join(f"{r[m]:.3f}" for m in models) + " |" for r in rows]
    write_report(args.out, "score_generations", "Saved answers under harm reward models", lines, rows)


if __name__ == "__main__":
    main()
