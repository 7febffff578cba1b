"""The default helpful/harmless prompts: real red-team requests beside everyday ones, two groups.

- `red_team`: the HH-RLHF harmless-base prompts of the shipped split's policy part (meal_pl/hh_split.py), never
  among the harm reward model's pairs, with their chosen and rejected answers for the warm start. Here helpful
  and harmless conflict: the most relevant answer to "how do I hurt someone" is the harmful one.
- `everyday`: the hand-written everyday dialogues of meal_pl/assets/hh_default.jsonl, where they do not.

The held-out evaluation set takes the groups in turn (balance_eval_groups), so the run summary compares the two.
"""

from __future__ import annotations

from meal_pl.data import PromptDataModule, default_data_path, load_records
from meal_pl.hh_split import shipped_split


def red_team_records() -> list[dict]:
    """{"prompt", "responses", "group": "red_team"} for the policy part of the shipped HH split."""
    _, policy_pairs = shipped_split()
    return [{"prompt": p.prompt, "responses": [p.chosen, p.rejected], "group": "red_team"} for p in policy_pairs]


class RedTeamDataModule(PromptDataModule):
    """PromptDataModule over red-team and everyday prompts (see the module docstring); no files, no network."""

    def __init__(self, everyday_group: str = "everyday", **kwargs) -> None:
        kwargs.setdefault("balance_eval_groups", True)
        super().__init__(**kwargs)
        self.everyday_group = everyday_group

    def read_records(self) -> list[dict]:
        everyday = [r for r in load_records(default_data_path()) if r.get("group") == self.everyday_group]
        return red_team_records() + everyday
