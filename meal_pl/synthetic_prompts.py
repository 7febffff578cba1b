"""Prompt families for `objective=synthetic_prompted`: prompts whose words lean to one letter set.

The issue's specification, fixed before any method ran on it: the rewards, analytic front and reference point
of `synthetic` (share of words starting with a-m vs n-z); prompts in two equal families, family "a" made
mostly (`share`, 80%) of a-m words and family "b" of n-z words; the warm start's responses continue in the
style of their prompt (the same share of same-set words), so that after it the policy leans to objective A
on family-a prompts and to B on family-b prompts. The training preference that widens the front therefore
differs by family, which gives a prompt-adaptive PWN something to learn. Everything is generated from a
seed, with no files.
"""

from __future__ import annotations

import random
import string
from typing import Any

from meal_pl.data import ASSISTANT, HUMAN, PromptDataModule

# Common English words, lower case, letters only: each list starts with letters of one reward's set.
A_TO_M = (
    "about above after again air all also and animal answer apple around ask away back ball bank bed before "
    "begin best big bird black blue boat book bread bring build call came car care cat city clean close cold "
    "come cook could dark day deep dog door down draw each early earth easy eat end even every eye face fall "
    "far farm fast field find fire fish fly food free friend full game garden give glad good great green "
    "ground grow half hand happy hard have help here high hill hold home horse hot house idea into job join "
    "jump just keep kind king know lake land large last late learn leave letter life light like line list "
    "little live long look love low made make many map milk mind more morning most mother move much music"
).split()
N_TO_Z = (
    "name near need never new next night north not note now number often old once one only open other our "
    "out over own page paper park part people pick place plant play point put quick quiet quite rain read "
    "ready red rest right river road rock room round run said same say school sea see set ship short show "
    "side small snow some song soon sound south stand star start stay still stone story street strong sun "
    "sure table take talk tall tell than that the their then there these thing think this three through time "
    "today together too top town tree true try turn two under until upon use very visit voice walk want warm "
    "watch water way well went what when where which white why will wind with word work world write year yes "
    "yet young your zero zoo"
).split()
WORDS = A_TO_M + N_TO_Z
LETTER_SETS = ("abcdefghijklm", "nopqrstuvwxyz")  # synthetic's two rewards; synthetic3's: a-h, i-p, q-z


def families(letter_sets: tuple[str, ...] | list[str] = LETTER_SETS) -> dict[str, tuple[list[str], list[str]]]:
    """Family name ("a", "b", "c", ... in set order) -> (words starting in its letter set, the other sets' words)."""
    table = {}
    for i, letters in enumerate(letter_sets):
        others = "".join(s for j, s in enumerate(letter_sets) if j != i)
        table[string.ascii_lowercase[i]] = ([w for w in WORDS if w[0] in letters], [w for w in WORDS if w[0] in others])
    return table


FAMILIES = families()  # K=2: family "a" -> (A_TO_M, N_TO_Z), "b" -> (N_TO_Z, A_TO_M)


def family_text(rng: random.Random, family: str, num_words: int, share: float,
                table: dict[str, tuple[list[str], list[str]]] = FAMILIES) -> str:
    """num_words words, round(share * num_words) of them from the family's own set, in random positions."""
    own, other = table[family]
    k = round(share * num_words)
    words = [rng.choice(own) for _ in range(k)] + [rng.choice(other) for _ in range(num_words - k)]
    rng.shuffle(words)
    return " ".join(words)


def letter_family_records(
    num_prompts: int = 256,
    share: float = 0.8,
    prompt_words: int = 10,
    response_words: int = 10,
    responses_per_prompt: int = 2,
    seed: int = 0,
    letter_sets: tuple[str, ...] | list[str] = LETTER_SETS,
) -> list[dict]:
    """num_prompts distinct HH prompts, one family per letter set in turn ("a", "b", ...), each with in-style
    SFT responses."""
    table = families(tuple(letter_sets))
    F = len(table)
    letters = "".join(letter_sets)
    if F < 2 or len(set(letters)) != len(letters) or any(not any(w[0] in s for w in WORDS) for s in letter_sets):
        raise ValueError(f"data.letter_sets={list(letter_sets)} must be >= 2 disjoint letter sets, each starting some word")
    if num_prompts < F or num_prompts % F:
        raise ValueError(f"data.num_prompts must be a multiple of the {F} families (equal families), got {num_prompts}")
    if not 0.5 < share <= 1.0:
        raise ValueError(f"data.share must be in (0.5, 1] (the family's own letter set is the majority), got {share}")
    for key, value in (("prompt_words", prompt_words), ("response_words", response_words)):
        if value < 1:
            raise ValueError(f"data.{key} must be >= 1, got {value}")
    if responses_per_prompt < 1:
        raise ValueError(f"data.responses_per_prompt must be >= 1, got {responses_per_prompt}")
    rng = random.Random(seed)
    records, seen = [], set()
    for i in range(num_prompts):
        family = string.ascii_lowercase[i % F]
        prompt = f"{HUMAN} {family_text(rng, family, prompt_words, share, table)}{ASSISTANT}"
        while prompt in seen:  # ~1e-13 for 10 words; kept so the count is exact whatever the settings
            prompt = f"{HUMAN} {family_text(rng, family, prompt_words, share, table)}{ASSISTANT}"
        seen.add(prompt)
        responses = [family_text(rng, family, response_words, share, table) for _ in range(responses_per_prompt)]
        records.append({"prompt": prompt, "responses": responses, "group": family})
    return records


class LetterFamilyDataModule(PromptDataModule):
    """PromptDataModule over the generated letter-family prompts; the evaluation hold-out is family-balanced."""

    def __init__(self, num_prompts: int = 256, share: float = 0.8, prompt_words: int = 10, response_words: int = 10,
                 responses_per_prompt: int = 2, generator_seed: int = 0, balance_eval_groups: bool = True,
                 letter_sets: list[str] | None = None, **datamodule: Any) -> None:
        """The generator's settings; `datamodule` are PromptDataModule's (batch_size, eval_size, seed, ...)."""
        super().__init__(balance_eval_groups=balance_eval_groups, **datamodule)
        self.generator = dict(num_prompts=num_prompts, share=share, prompt_words=prompt_words,
                              response_words=response_words, responses_per_prompt=responses_per_prompt, seed=generator_seed,
                              letter_sets=tuple(letter_sets or LETTER_SETS))
        # Generated now (milliseconds), so bad settings fail when the config is instantiated, not at setup.
        self.records = letter_family_records(**self.generator)

    def read_records(self) -> list[dict]:
        return self.records
