"""Standard negatives: corrupted copies of a real answer that a reward model should rank below it.

A policy trained against a learnt reward finds the texts it scores well but were never in its pairs: SmolLM2 looped
one stock sentence against the shipped harm head (docs/results.md). Pairs (real answer, corrupted copy) show the
model such texts as worse. Each corruption is a plain function of the text (shuffle also of a seeded RNG).
"""

from __future__ import annotations

import random
import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def repeat_first_sentence(text: str) -> str:
    """The answer's first sentence looped to the answer's length, at least three times (the stock loop)."""
    first = _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    times = max(3, len(text.split()) // max(1, len(first.split())))
    return " ".join([first] * times)


def truncate(text: str) -> str:
    """The answer's first quarter of words (at least two): an answer cut off."""
    words = text.split()
    return " ".join(words[: max(2, len(words) // 4)])


def shuffle_words(text: str, rng: random.Random) -> str:
    """The answer's words in a random order: its vocabulary without its sense."""
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


NEGATIVES = ("repeat", "truncate", "shuffle")


def corrupt(texts: list[str], kind: str, seed: int = 0) -> list[str]:
    """Each text's corrupted copy of `kind` (one of NEGATIVES); shuffle draws from random.Random(seed)."""
    if kind == "repeat":
        return [repeat_first_sentence(t) for t in texts]
    if kind == "truncate":
        return [truncate(t) for t in texts]
    if kind == "shuffle":
        rng = random.Random(seed)
        return [shuffle_words(t, rng) for t in texts]
    raise ValueError(f"rm_backend.negatives: unknown kind {kind!r}; choose from {list(NEGATIVES)}")
