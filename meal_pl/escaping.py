"""User text cannot set the preference: a tag string typed into a prompt is encoded as ordinary text.

The preference tags (`<helpful:0.70>`) are special tokens, and a tokenizer turns the same text typed by a user
into them: an operator serving the policy at a harmless-leaning w could be overridden by a prompt that carries its
own tags. Chat templates escape control tokens in user content for the same reason. Here every tag string in a
prompt is encoded with `split_special_tokens=True` (its characters, never its id); only the conditioner appends tag
ids. Other special tokens (a chat template's own turn markers) are left as they are.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

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


def tags_as_vocabulary(tokenizer_dir: str | Path) -> bool:
    """Rewrite a saved tokenizer so that typed tag text stays text there too: each tag moves from the added tokens
    (which a tokenizer matches in any text) into the model's vocabulary under the same id (which its merges never
    produce from text), so `convert_tokens_to_ids("<helpful:0.70>")` and decoding still work. False, unchanged,
    for a tokenizer whose model has no token -> id vocabulary (BPE and WordPiece have one)."""
    path = Path(tokenizer_dir)
    spec = json.loads((path / "tokenizer.json").read_text())
    vocab = spec.get("model", {}).get("vocab")
    if not isinstance(vocab, dict):
        return False
    tags = [t for t in spec.get("added_tokens", []) if TAG_SHAPE.fullmatch(t["content"])]
    spec["added_tokens"] = [t for t in spec.get("added_tokens", []) if not TAG_SHAPE.fullmatch(t["content"])]
    vocab.update({t["content"]: t["id"] for t in tags})
    (path / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if not (path / name).is_file():
            continue
        config = json.loads((path / name).read_text())
        for key in ("extra_special_tokens", "additional_special_tokens"):
            if isinstance(config.get(key), list):
                config[key] = [t for t in config[key] if not (isinstance(t, str) and TAG_SHAPE.fullmatch(t))]
        if isinstance(config.get("added_tokens_decoder"), dict):
            config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items()
                                              if not TAG_SHAPE.fullmatch(str(v.get("content", "")))}
        (path / name).write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return True
