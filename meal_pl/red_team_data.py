"""The default helpful/harmless prompts: real red-team requests beside everyday ones, two groups.

- `red_team`: the HH-RLHF harmless-base prompts of the shipped split's policy part (meal_pl/hh_split.py), never
  among the harm reward model's pairs, with their chosen and rejected answers for the warm start. Here helpful
  and harmless conflict: the most relevant answer to "how do I hurt someone" is the harmful one.
- `everyday`: the hand-written everyday dialogues of meal_pl/assets/hh_default.jsonl, where they do not.

The held-out evaluation set takes the groups in turn (balance_eval_groups), so the run summary compares the two.
72% of the red-team prompts are multi-turn dialogues (median 403 characters) and every everyday prompt is one question
(median 69): a PWN could tell the groups apart by length alone. `data.max_turns=1` keeps the 139 single-question
red-team prompts (median 74 characters), so that a group difference can only come from content.
"""

from __future__ import annotations

from meal_pl.data import PromptDataModule, default_data_path, load_records
from meal_pl.hh_split import shipped_split
from meal_pl.ranges import check_integer


def red_team_records() -> list[dict]:
    """{"prompt", "responses", "group": "red_team"} for the policy part of the shipped HH split."""
    _, policy_pairs = shipped_split()
    return [{"prompt": p.prompt, "responses": [p.chosen, p.rejected], "group": "red_team"} for p in policy_pairs]


class RedTeamDataModule(PromptDataModule):
    """PromptDataModule over red-team and everyday prompts (see the module docstring); no files, no network."""

    def __init__(self, everyday_group: str = "everyday", max_turns: int | None = None, **kwargs) -> None:
        kwargs.setdefault("balance_eval_groups", True)
        if max_turns is not None:
            check_integer("data.max_turns", max_turns, 1, " (or null: every red-team dialogue)")
        super().__init__(**kwargs)
        self.everyday_group, self.max_turns = everyday_group, max_turns

    def read_records(self) -> list[dict]:
        everyday = [r for r in load_records(default_data_path()) if r.get("group") == self.everyday_group]
        red_team = [r for r in red_team_records() if self.max_turns is None or human_turns(r["prompt"]) <= self.max_turns]
        return red_team + everyday


def human_turns(prompt: str) -> int:
    """The human turns of an HH-format dialogue."""
    return prompt.count("\n\nHuman:")
