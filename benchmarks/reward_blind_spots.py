"""What do the objective's rewards pay for text that is not an answer? Canned responses built from each request.

    python benchmarks/reward_blind_spots.py                                   # the default objective
    python benchmarks/reward_blind_spots.py -o objective.rewards.helpful.copy_penalty=pairs   # train overrides

On the objective's held-out evaluation prompts (the ones every front is measured on), each request gets the canned
responses of `KINDS`: the data's own answer, a refusal, the request itself, its words shuffled (seeded), those words
after "You can", a refusal followed by them, and a loop of the data's answer. Prints each kind's mean reward per
objective and prompt group; writes reward_blind_spots.json and .md to --out. A kind that is not an answer but scores
like one (or better) is a blind spot a policy can find: SmolLM2 found a stock refusal and loops of the harm model's.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meal_pl.rewards.relevance import last_request  # noqa: E402

REFUSAL = "I'm sorry, but I can't help with that."
# Words too common to say what a request is about; the shuffled copies keep the rest, as a policy copying the topic would.
_COMMON = set("i you the a an to of and is it my me do how what can in for on with that this be are your".split())


def shuffled_words(request: str, rng: random.Random, limit: int = 10) -> str:
    """The request's content words in a seeded random order (at most `limit`)."""
    words = [w for w in re.findall(r"[A-Za-z']+", request) if w.lower() not in _COMMON]
    rng.shuffle(words)
    return " ".join(words[:limit])


def loop(answer: str, words: int = 6, times: int = 4) -> str:
    """The answer's first `words` words, `times` over."""
    return " ".join(answer.split()[:words] * times)


KINDS = {
    "data answer": lambda request, answer, rng: answer,
    "refusal": lambda request, answer, rng: REFUSAL,
    "the request": lambda request, answer, rng: request,
    "its words shuffled": lambda request, answer, rng: shuffled_words(request, rng),
    "'You can' + its words": lambda request, answer, rng: "You can " + shuffled_words(request, rng),
    "refusal + its words": lambda request, answer, rng: REFUSAL[:-5] + " " + shuffled_words(request, rng, 5) + ".",
    "loop of the answer": lambda request, answer, rng: loop(answer),
}


def canned(prompts: list[str], answers: list[str], seed: int = 0) -> dict[str, list[str]]:
    """{kind: one response per prompt}; the shuffles draw from one generator seeded with `seed`, kind by kind."""
    rng = random.Random(seed)
    return {kind: [make(last_request(p), a, rng) for p, a in zip(prompts, answers, strict=True)] for kind, make in KINDS.items()}


def report(overrides: list[str], prompts_limit: int | None = None) -> dict:
    """Each kind's mean raw reward per objective, over all held-out prompts and per prompt group."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from meal_pl.rewards import RewardSet
    from meal_pl.runs import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    prompts, groups = datamodule.eval_prompts(prompts_limit), datamodule.eval_groups(prompts_limit)
    answers = [(datamodule.responses.get(p) or [""])[0] for p in prompts]
    rewards = RewardSet(instantiate(cfg.objective.rewards))
    rows = []
    for kind, texts in canned(prompts, answers).items():
        raw = rewards(prompts, texts).float().cpu()
        row = {"kind": kind, "example": texts[0], "all": raw.mean(0).tolist()}
        for group in sorted(set(groups)):
            mask = torch.tensor([g == group for g in groups])
            row[group] = raw[mask].mean(0).tolist()
        rows.append(row)
    return {"objective": cfg.objective.name, "objectives": list(rewards.names), "overrides": overrides,
            "prompts": len(prompts), "groups": sorted(set(groups)), "rows": rows}


def table(result: dict) -> list[str]:
    from group_table import group_table

    return [f"objective {result['objective']}, {result['prompts']} held-out prompts, overrides {result['overrides'] or 'none'}",
            "", *group_table("response", "kind", result)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--override", action="append", default=[], help="a train config override (repeatable)")
    parser.add_argument("--prompts", type=int, default=None, help="the first n held-out prompts (default: all)")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()
    from common import write_report  # here, not at import: common sets the thread count for timed benchmarks

    result = report(args.override, args.prompts)
    write_report(args.out, "reward_blind_spots", "What the rewards pay for text that is not an answer", table(result), result)


if __name__ == "__main__":
    main()
