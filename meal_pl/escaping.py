"""User text cannot set the preference: a tag string typed into a prompt is encoded as ordinary text.

The preference tags (`<helpful:0.70>`) are special tokens, and a tokenizer turns the same text typed by a user
into them: an operator serving the policy at a harmless-leaning w could be overridden by a prompt that carries its
own tags. Chat templates escape control tokens in user content for the same reason. Here every tag string in a
prompt is encoded with `split_special_tokens=True` (its characters, never its id); only the conditioner appends tag
ids. Other special tokens (a chat template's own turn markers) are left as they are.
"""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizerBase

# The shape of a preference tag, `<name:value>` (meal-pl's conditioners; RiC's score tags have no special tokens).
TAG_SHAPE = re.compile(r"<[^<>\s:]+:[-+]?\d*\.?\d+>")


def tag_strings(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The tokenizer's registered tag tokens (longest first, so a regex prefers the whole tag); computed once per
    vocabulary size, since prompts are encoded every step and tags are only ever added."""
    cached = getattr(tokenizer, "_meal_tag_strings", None)
    if cached is None or cached[0] != len(tokenizer):
        tags = sorted((t for t in tokenizer.get_added_vocab() if TAG_SHAPE.fullmatch(t)), key=len, reverse=True)
        cached = (len(tokenizer), tags)
        tokenizer._meal_tag_strings = cached
    return cached[1]


def encode_without_tags(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (no BOS/EOS added) in which no registered tag string becomes a tag id."""
    tags = tag_strings(tokenizer)
    if not tags or not any(t in text for text in texts for t in tags):
        return tokenizer(texts, add_special_tokens=False)["input_ids"]  # the common case: one batched call
    pattern = re.compile("(" + "|".join(re.escape(t) for t in tags) + ")")
    rows = []
    for text in texts:
        ids: list[int] = []
        for i, piece in enumerate(pattern.split(text)):
            if piece:  # odd pieces are tag strings: their characters, not their ids
                ids += tokenizer(piece, add_special_tokens=False, split_special_tokens=bool(i % 2))["input_ids"]
        rows.append(ids)
    return rows
