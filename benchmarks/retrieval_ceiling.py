"""What could a policy that only knows the training dialogues answer? The nearest training answers, scored.

    python benchmarks/retrieval_ceiling.py                    # the default objective's 32 held-out prompts
    python benchmarks/retrieval_ceiling.py -o seed=1          # train overrides

Each held-out request (the prompts every front is measured on) gets answers taken from the training dialogues: the
training prompts nearest to it by MiniLM cosine of their last requests, and their answers (both of an HH pair),
scored against the held-out request with the objective's rewards. Rows: the nearest prompt's first answer; the best
of the `--neighbours` nearest prompts' answers under each objective alone (what rejection sampling would keep at
that corner, were the policy able to reproduce them); a training answer drawn at random; the data's own answer.
A retrieved answer that scores near the data's own says the dialogues hold on-topic text for unseen requests; one
near the random draw says they do not. Writes retrieval_ceiling.json and .md to --out.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from meal_pl.retrieval import nearest_store_entries  # noqa: E402
from meal_pl.rewards.relevance import last_request  # noqa: E402


def best_by(scores: torch.Tensor, objective: int) -> torch.Tensor:
    """Per prompt, the candidates' reward vector where objective `objective` is highest: scores [P, C, K] -> [P, K]."""
    pick = scores[:, :, objective].argmax(dim=1)
    return scores[torch.arange(scores.shape[0]), pick]


def report(overrides: list[str], neighbours: int = 2, seed: int = 0) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from meal_pl.rewards import RewardSet
    from meal_pl.rewards.encoder import shared_encoder
    from meal_pl.runs import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    prompts, groups = datamodule.eval_prompts(), datamodule.eval_groups()
    train = [p for p in datamodule.train_prompts if datamodule.responses.get(p)]
    encoder = shared_encoder()  # the one MiniLM the rewards also read
    near = nearest_store_entries(encoder.embed([last_request(p) for p in prompts]), encoder.embed([last_request(p) for p in train]), neighbours)
    rewards = RewardSet(instantiate(cfg.objective.rewards))
    names = list(rewards.names)

    candidates = [[a for j in row for a in datamodule.responses[train[j]]] for row in near]
    width = min(len(c) for c in candidates)
    flat = [c[:width] for c in candidates]
    scores = rewards([p for p, c in zip(prompts, flat, strict=True) for _ in c], [a for c in flat for a in c]).float().cpu()
    scores = scores.view(len(prompts), width, len(names))
    rng = random.Random(seed)
    pool = [a for p in train for a in datamodule.responses[p]]
    rows = {
        "the data's own answer": rewards(prompts, [datamodule.responses[p][0] for p in prompts]).float().cpu(),
        "nearest training prompt's answer": scores[:, 0],
        **{f"best of {width} retrieved, for {n}": best_by(scores, k) for k, n in enumerate(names)},
        "a training answer at random": rewards(prompts, [rng.choice(pool) for _ in prompts]).float().cpu(),
    }
    out = []
    for label, raw in rows.items():
        row = {"answer": label, "all": raw.mean(0).tolist()}
        for group in sorted(set(groups)):
            mask = torch.tensor([g == group for g in groups])
            row[group] = raw[mask].mean(0).tolist()
        out.append(row)
    example = {"prompt": last_request(prompts[0]), "nearest training request": last_request(train[near[0][0]]),
               "its answer": datamodule.responses[train[near[0][0]]][0]}
    return {"objective": cfg.objective.name, "objectives": names, "overrides": overrides, "prompts": len(prompts),
            "training_prompts": len(train), "neighbours": neighbours, "candidates": width, "seed": seed,
            "groups": sorted(set(groups)), "rows": out, "example": example}


def table(result: dict) -> list[str]:
    from group_table import group_table

    return [f"objective {result['objective']}, {result['prompts']} held-out prompts, answers from "
            f"{result['training_prompts']} training prompts ({result['neighbours']} nearest, {result['candidates']} "
            f"answers), overrides {result['overrides'] or 'none'}", "", *group_table("answer", "answer", result)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--override", action="append", default=[], help="a train config override (repeatable)")
    parser.add_argument("--neighbours", type=int, default=2, help="nearest training prompts whose answers compete")
    parser.add_argument("--seed", type=int, default=0, help="the random training answer's draw")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()
    if args.neighbours < 1:
        parser.error(f"--neighbours {args.neighbours}: give at least 1")
    from common import write_report  # here, not at import: common sets the thread count for timed benchmarks

    result = report(args.override, args.neighbours, args.seed)
    write_report(args.out, "retrieval_ceiling", "What the training dialogues hold for unseen requests", table(result), result)


if __name__ == "__main__":
    main()
