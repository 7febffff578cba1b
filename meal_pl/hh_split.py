"""The shipped HH-RLHF harmless-base pairs, split once by prompt: reward-model pairs and red-team policy prompts.

    shuffle the pairs (one per distinct prompt) with random.Random(SPLIT_SEED)
    first REWARD_MODEL_PAIRS -> the harm reward model (its last `held_out` pairs: its held-out accuracy)
    the rest                 -> red-team prompts for the policy (training, and the evaluation hold-out)

So no prompt the policy trains or is evaluated on was seen by the reward model. The seed and the sizes are
constants, not config: the shipped reward model and every run's data depend on the same split.
"""

from __future__ import annotations

import random
from importlib import resources

from meal_pl.reward_model.pairs import Pair, load_pairs

SPLIT_SEED = 0
REWARD_MODEL_PAIRS = 1800


def shipped_pairs_path() -> str:
    """Anthropic HH-RLHF harmless-base test split (MIT; meal_pl/assets/hh_rlhf/README.md)."""
    return str(resources.files("meal_pl") / "assets" / "hh_rlhf" / "harmless_base_test.jsonl.gz")


def one_per_prompt(pairs: list[Pair]) -> list[Pair]:
    """The first pair of each distinct prompt, in file order: a split by pair would put a prompt on both sides."""
    seen: dict[str, Pair] = {}
    for pair in pairs:
        seen.setdefault(pair.prompt, pair)
    return list(seen.values())


def split_pairs(pairs: list[Pair], reward_model_pairs: int = REWARD_MODEL_PAIRS,
                seed: int = SPLIT_SEED) -> tuple[list[Pair], list[Pair]]:
    """(reward-model pairs, policy pairs): disjoint by prompt, the same for the same pairs and seed."""
    distinct = one_per_prompt(pairs)
    if not 0 < reward_model_pairs < len(distinct):
        raise ValueError(f"reward_model_pairs={reward_model_pairs} must leave pairs on both sides of "
                         f"{len(distinct)} distinct prompts")
    random.Random(seed).shuffle(distinct)
    return distinct[:reward_model_pairs], distinct[reward_model_pairs:]


def shipped_split() -> tuple[list[Pair], list[Pair]]:
    """The split of the shipped file (pairs that prefer nothing, 9 of 2,312, dropped)."""
    return split_pairs(load_pairs(shipped_pairs_path(), skip_invalid=True))
