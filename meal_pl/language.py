"""Whether an answer is in English: function words counted against those of the languages an over-trained SmolLM2
drifts into (Spanish, French, German: docs/warm_start.md), and the share of letters outside ASCII. A heuristic, not a
language model: it tells "Aviso de parecería: vamos a habiler" and "Startleen kann ich weißen" from English."""

from __future__ import annotations

import re

ENGLISH = frozenset("the a an and or of to in on for with is are was were be it this that you your i my we they he she "
                    "not can do does how what if as at by from have has will would should there their".split())
FOREIGN = frozenset("de la el los las que y en un una es por para con del se lo le les et est une des pas pour qui dans "
                    "der das und ist nicht ich ein eine zu mit den auf sie wir kann je il nous vous muy pero como".split())
_WORD = re.compile(r"[^\W\d_]+")


def is_english(text: str) -> bool:
    """True when `text` has at least as many English function words as foreign ones and under 5% of its letters outside
    ASCII (an empty answer counts as English: it is in no other language)."""
    words = _WORD.findall(text.lower())
    letters = "".join(words)
    if letters and sum(not ch.isascii() for ch in letters) > 0.05 * len(letters):
        return False
    return sum(w in ENGLISH for w in words) >= sum(w in FOREIGN for w in words)


def repeat_share(texts: list[str]) -> float:
    """The share of answers that are the most frequent answer text (a stock reply the rewards pay for, not steering)."""
    if not texts:
        return 0.0
    counts: dict[str, int] = {}
    for t in texts:
        key = " ".join(t.split())
        counts[key] = counts.get(key, 0) + 1
    return max(counts.values()) / len(texts)
