"""`text`: the preference written in words and digits the model already reads, as Rewards-in-Context writes its
reward scores into the prompt: "... \\nPreference: helpful 0.70, harmless 0.30".

Tags are new tokens that start a little noise apart and, at LoRA's learning rate, stay there (docs/results.md:
0.24 apart after 40 SmolLM2 steps, where two of its ordinary tokens lie 3.4 apart), so the policy's input barely
says which end of the simplex was asked for. Digits are ordinary tokens: two preferences differ in the input from
the first step. No token is added, no embedding row trains, and export has nothing to merge.

The block has one length for every preference (each character of a two-decimal value is its own token), so a
sequence's preference is rewritten in place (relabelling) and read back from its ids. With a chat template the block
ends the user's turn, before the template's tail that opens the assistant's turn, where an instruct model reads a
request rather than the start of its own answer; without one it follows the prompt, as the tags do.

Unlike tag ids, this text is what a user can type: a prompt may hold a block of its own. The conditioner's block
comes last and is the one read back, but the policy reads both (docs/safety.md).
"""

from __future__ import annotations

import json
import re

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from meal_pl.chat import FLAG as CHAT_FLAG
from meal_pl.conditioning.tags import TextTagConditioner

_MARK = "\x00meal-request\x00"  # stands for the request when the template's tail is read off


class TextPreferenceConditioner(TextTagConditioner):
    """Preference -> a fixed-length block of ordinary tokens: `header` then `<name> <value>` per objective."""

    name = "text"

    def __init__(self, names: list[str], resolution: int = 20, header: str = "\nPreference:") -> None:
        super().__init__(names, resolution)
        if 100 % resolution:
            raise ValueError(f"conditioning.resolution={resolution} must divide 100 for conditioning=text (values are "
                             "written with two decimals): e.g. 10, 20 or 100")
        self.header = header
        self.token_ids = torch.zeros(len(self.names), 0, dtype=torch.long)  # no tag tokens: nothing to suppress
        self.tail_ids: Tensor | None = None  # (n,) the chat template's tail after the request; empty without one
        self.pieces: list[Tensor] = []  # header, then each objective's " <name> " (", <name> " after the first)
        self.values: Tensor | None = None  # (resolution+1, 4) ids of "0.00" .. "1.00"

    def value_text(self, step: int) -> str:
        return f"{step / self.resolution:.2f}"

    def attach(self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
        """Encode the block's fixed pieces and the template's tail once; the model is left as it is."""
        def encode(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        chars = {}
        for ch in "0123456789.":
            ids = encode(ch)
            if len(ids) != 1:
                raise ValueError(f"conditioning=text needs each digit and '.' as one token; this tokenizer writes {ch!r} "
                                 f"as {len(ids)} tokens: use conditioning=tags")
            chars[ch] = ids[0]
        self.values = torch.tensor([[chars[c] for c in self.value_text(s)] for s in range(self.resolution + 1)])
        names = [f" {n} " if i == 0 else f", {n} " for i, n in enumerate(self.names)]
        self.pieces = [torch.tensor(encode(t), dtype=torch.long) for t in [self.header, *names]]
        tail = ""
        if getattr(tokenizer, CHAT_FLAG, False):
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": _MARK}], tokenize=False,
                                                     add_generation_prompt=True)
            tail = rendered.split(_MARK)[-1]
        self.tail_ids = torch.tensor(encode(tail) if tail else [], dtype=torch.long)
        self.install(model, num_plain_rows=model.get_input_embeddings().weight.shape[0])

    @property
    def position(self) -> str:
        """Where the block goes, in words (export's meal.json and MEAL_README.md)."""
        if self.tail_ids is not None and len(self.tail_ids):
            return "at the end of the user's turn, before the chat template's opening of the assistant's turn"
        return "right after the prompt, before the response"

    def export_fields(self, example: str, typed_tags_are_text: bool) -> dict:
        """meal.json: no tag token; the preference is text typed into the request."""
        return {"tag_format": None, "tag_resolution": self.resolution, "tag_position": self.position,
                "tag_input": "plain text, typed into the request", "example_tags": None, "preference_text": example}

    def export_usage(self, example: str, merged: str) -> str:
        return (f"- Conditioning backend: `{self.name}`. A preference is written as ordinary text, {self.position}, one\n"
                "  value per objective in the order of `meal.json` \"objectives\", multiples of 1/tag_resolution that sum\n"
                f"  to 1, two decimals, e.g. {json.dumps(example)}.")

    @property
    def num_tokens(self) -> int:
        return sum(len(p) for p in self.pieces) + len(self.names) * self.values.shape[1]

    def tag_ids(self, weights: Tensor) -> Tensor:
        """(B,K) weights -> (B,L) ids of the block that writes them."""
        assert self.values is not None, "call attach(tokenizer, model) first"
        steps = (self.quantize(weights) * self.resolution).round().long().cpu()
        B = len(steps)
        parts = [self.pieces[0].expand(B, -1)]
        for k in range(len(self.names)):
            parts += [self.pieces[k + 1].expand(B, -1), self.values[steps[:, k]]]
        return torch.cat(parts, 1).to(weights.device)

    def condition(self, prompt_ids: Tensor, prompt_mask: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Write the block into left-padded prompts, before the template's tail: (B,P) -> (B,P+L)."""
        block = self.tag_ids(weights).to(prompt_ids.device)
        n = len(self.tail_ids)
        ones = torch.ones_like(block, dtype=prompt_mask.dtype)
        if n == 0:
            return torch.cat([prompt_ids, block], 1), torch.cat([prompt_mask, ones], 1)
        tail = self.tail_ids.to(prompt_ids.device)
        if prompt_ids.shape[1] < n or not (prompt_ids[:, -n:] == tail).all():
            raise ValueError("conditioning=text: a prompt does not end with the chat template's opening of the "
                             "assistant's turn; set model.chat_template=true for this model, or use conditioning=tags")
        return (torch.cat([prompt_ids[:, :-n], block, prompt_ids[:, -n:]], 1),
                torch.cat([prompt_mask[:, :-n], ones, prompt_mask[:, -n:]], 1))

    def weights_from_ids(self, ids: Tensor) -> Tensor:
        """The (B,K) preference the block in each row of (B,L) ids writes (its last occurrence)."""
        block = self.tag_ids(torch.full((1, len(self.names)), 1.0 / len(self.names)))[0].to(ids.device)
        value_at = torch.zeros(len(block), dtype=torch.bool)
        offset = len(self.pieces[0])
        for k in range(len(self.names)):
            offset += len(self.pieces[k + 1])
            value_at[offset:offset + self.values.shape[1]] = True
            offset += self.values.shape[1]
        if ids.shape[1] < len(block):
            raise ValueError(f"the ids ({ids.shape[1]} tokens) are shorter than a preference block ({len(block)})")
        windows = ids.unfold(1, len(block), 1)  # (B,W,L)
        fixed = (windows == block)[..., ~value_at.to(ids.device)].all(-1)  # the block's words match here
        if not fixed.any(1).all():
            row = int((~fixed.any(1)).nonzero()[0])
            raise ValueError(f"row {row} of the ids holds no preference block {self.format(torch.ones(1, len(self.names)))[0]!r}")
        start = fixed.shape[1] - 1 - fixed.flip(1).int().argmax(1)  # last match per row
        found = windows[torch.arange(len(ids), device=ids.device), start][:, value_at.to(ids.device)]
        digits = found.view(len(ids), len(self.names), -1).cpu()
        table = self.values
        steps = (digits[:, :, None, :] == table[None, None]).all(-1).float().argmax(-1)
        return (steps / self.resolution).to(ids.device)  # as the tags' reading: on the ids' device

    def format(self, weights: Tensor) -> list[str]:
        """(B,K) weights -> the block's text, for logs and the generate CLI."""
        steps = (self.quantize(weights) * self.resolution).round().long().tolist()
        return [self.header + " " + ", ".join(f"{n} {self.value_text(s)}" for n, s in zip(self.names, row, strict=True))
                for row in steps]

    def parse(self, text: str) -> Tensor:
        """Inverse of format: read the K values back out of a string."""
        found = {n: re.search(rf"\b{re.escape(n)} ([0-9]\.[0-9]+)", text) for n in self.names}
        missing = [n for n, m in found.items() if m is None]
        if missing:
            raise ValueError(f"no preference value for {missing} in {text!r}")
        return torch.tensor([float(found[n].group(1)) for n in self.names])
