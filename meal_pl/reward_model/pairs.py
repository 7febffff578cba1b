"""Preference pairs for a reward model: (prompt, chosen, rejected), read and checked line by line."""

from __future__ import annotations

import os
from typing import NamedTuple

from meal_pl.data import hub_rows, jsonl_rows, split_hh


class Pair(NamedTuple):
    prompt: str  # HH form, ending with "\n\nAssistant:"
    chosen: str
    rejected: str


def pair_from_row(row: object) -> Pair:
    """One pair from an HH row {"chosen", "rejected"} (whole dialogues) or {"prompt", "chosen", "rejected"}."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    missing = [k for k in ("chosen", "rejected") if not isinstance(row.get(k), str)]
    if missing:
        raise ValueError(f"missing or non-string field {missing[0]!r} (expected 'chosen' and 'rejected', "
                         "whole HH dialogues, or 'prompt' with 'chosen' and 'rejected' answers)")
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise ValueError("field 'prompt' is empty or not a string")
        prompt, chosen, rejected = row["prompt"], row["chosen"].strip(), row["rejected"].strip()
    else:
        prompt, chosen = split_hh(row["chosen"])
        rejected_prompt, rejected = split_hh(row["rejected"])
        if rejected_prompt != prompt:
            raise ValueError("'chosen' and 'rejected' continue different dialogues")
    if not chosen or not rejected:
        raise ValueError(f"empty {'chosen' if not chosen else 'rejected'} answer")
    if chosen == rejected:
        raise ValueError("chosen == rejected: the pair prefers nothing")
    return Pair(prompt, chosen, rejected)


def load_pairs(path: str, skip_invalid: bool = False) -> list[Pair]:
    """Every pair of a .jsonl/.jsonl.gz file; a bad line raises ValueError naming the file, the line and the problem.

    skip_invalid drops the pairs whose content prefers nothing (equal or empty answers, different dialogues): real
    HH data holds a few. A line that is not JSON, or lacks a field, is an error either way.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pairs file not found: {path} (config key pairs.path)")
    pairs = []
    for lineno, row in jsonl_rows(path):
        try:
            pairs.append(pair_from_row(row))
        except ValueError as e:
            content = isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("chosen", "rejected"))
            if not (skip_invalid and content):
                raise ValueError(f"{path}, line {lineno}: {e}") from e
    if not pairs:
        raise ValueError(f"{path}: no preference pairs in the file (config key pairs.path)")
    return pairs


def load_hub_pairs(name: str, split: str, data_dir: str | None = None) -> list[Pair]:
    """Pairs of a hub dataset in either format (needs the network, or the dataset in the local cache; `data_dir`:
    one subset of it); pairs that prefer nothing (equal or empty answers) are dropped."""
    pairs = []
    for row in hub_rows(name, split, "pairs.hub_name", "pairs.path", data_dir):
        try:
            pairs.append(pair_from_row(dict(row)))
        except ValueError:
            continue
    return pairs
