"""`tags`: text tags such as `<helpful:0.70><harmless:0.30>`, the base of every backend.

The tags sit between the prompt and the response (RiC-compatible), one special token per objective and
quantised value, so swapping the preference of a sequence is a swap of K token ids and a generated
sequence can be relabelled with the trade-off it achieved without re-tokenising. Every other backend
keeps these tags and adds its own path for w into the network (`install`, `merge_into`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from meal_pl.chat import FLAG as CHAT_FLAG
from meal_pl.conditioning.base import preference_modules
from meal_pl.pwn import checked_preference


class TextTagConditioner:
    """Preference -> K special tag tokens appended after the prompt."""

    name = "tags"
    reads_preference = False  # True where the network reads w beyond the tags: a preference context per forward, export at one w

    def __init__(self, names: list[str], resolution: int = 20) -> None:
        if resolution < 1:
            raise ValueError(f"conditioning.resolution={resolution} must be >= 1 (tag values are multiples of 1/resolution)")
        self.names = list(names)
        self.resolution = resolution
        self.token_ids: Tensor | None = None  # (K, resolution+1) token id of <name:value>

    @property
    def num_tokens(self) -> int:
        return len(self.names)

    def tag(self, name: str, step: int) -> str:
        return f"<{name}:{step / self.resolution:.2f}>"

    def attach(self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
        """Register the tag tokens with the tokenizer and grow the model's embeddings to match."""
        tags = [self.tag(n, s) for n in self.names for s in range(self.resolution + 1)]
        # A chat model (meal_pl.chat) starts every tag near the embedding of the template's last token (the
        # newline that opens the assistant's turn), where the tags sit: fresh random rows right before the
        # answer derail a pretrained model into fragments, and word-initialised ones ("helpful 1.00") into
        # digits. A little noise keeps the tags distinct; training moves them apart.
        anchor = _turn_opening_token(tokenizer) if getattr(tokenizer, CHAT_FLAG, False) else None
        tokenizer.add_special_tokens({"extra_special_tokens": tags}, replace_extra_special_tokens=False)
        old = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > old:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            emb = model.get_input_embeddings().weight
            with torch.no_grad(), torch.random.fork_rng():
                torch.manual_seed(len(tokenizer))
                # Distinct small random rows: mean-initialised tags would all look alike and steer nothing at first.
                emb[old:] = emb[:old].mean(0) + 0.5 * emb[:old].std() * torch.randn_like(emb[old:])
                if anchor is not None:
                    emb[old:] = emb[anchor] + 0.05 * emb[:old].std() * torch.randn_like(emb[old:])
        ids = tokenizer.convert_tokens_to_ids(tags)
        self.token_ids = torch.tensor(ids, dtype=torch.long).view(len(self.names), self.resolution + 1)
        self.install(model, num_plain_rows=old)

    def install(self, model: PreTrainedModel, num_plain_rows: int) -> None:
        """Put the backend's modules into the model (after the tag rows exist); tags have none."""

    @contextlib.contextmanager
    def preference(self, model: nn.Module, weights: Tensor) -> Iterator[None]:
        """Within the block, every row of `model`'s forward sees its (B,K) preference, quantised as the tags.

        The model's batch may be a multiple of B (generate's num_return_sequences repeats rows). A no-op for
        backends whose w reaches the network through the tags only.
        """
        w = self.quantize(weights.detach().float().reshape(-1, len(self.names)))
        modules = preference_modules(model)
        previous = [m.preference for m in modules]
        for m in modules:
            m.preference = w
        try:
            yield
        finally:
            for m, p in zip(modules, previous, strict=True):
                m.preference = p

    @contextlib.contextmanager
    def reference(self, model: nn.Module) -> Iterator[None]:
        """Within the block the backend runs its frozen copy (pi_ref of a LoRA policy, adapters disabled)."""
        modules = preference_modules(model)
        for m in modules:
            m.use_frozen = True
        try:
            yield
        finally:
            for m in modules:
                m.use_frozen = False

    def snapshot(self, model: nn.Module) -> None:
        """Make the backend's current parameters its frozen copy (with LoRA: after the warm start's fold)."""
        for m in preference_modules(model):
            m.snapshot()

    def unfreeze(self, model: nn.Module) -> None:
        """Let the backend's own parameters train again after peft froze everything but its adapters."""
        for m in preference_modules(model):
            for p in m.preference_parameters():
                p.requires_grad_(True)

    def merge(self, model: PreTrainedModel, weights: list[float] | Tensor) -> PreTrainedModel:
        """Turn a plain (not peft) model, in place, into one that acts as the conditioned model at `weights`.

        The result has no meal_pl modules left: `AutoModelForCausalLM.from_pretrained` loads it as saved.
        """
        w = check_preference(weights, self.names)
        self.merge_into(model, self.quantize(w[None])[0])
        return model

    def merge_into(self, model: PreTrainedModel, weights: Tensor) -> None:
        """Backend part of merge; `weights` (K,) already quantised. Tags: nothing to merge."""

    def export_fields(self, example: str, typed_tags_are_text: bool) -> dict:
        """What an export's meal.json says about writing a preference (`example`: the uniform one, formatted)."""
        return {
            "tag_format": "<{objective}:{value:.2f}>",
            "tag_resolution": self.resolution,
            "tag_position": "after the prompt, before the response",
            "tag_input": "token ids (tokenizer.convert_tokens_to_ids); typed tag text encodes as text"
            if typed_tags_are_text else "special tokens: typed tag text becomes tag ids (strip <name:value> from user text)",
            "example_tags": example,
        }

    def export_usage(self, example: str, merged: str) -> str:
        """An export's MEAL_README.md paragraph on writing a preference (`merged`: what a merge at one w means)."""
        return (
            "- A preference enters as K tag tokens appended right after the prompt, one per objective in the order of\n"
            "  `meal.json` \"objectives\", values rounded to multiples of 1/tag_resolution that sum to 1, e.g.\n"
            f"  `{example}`. Each tag is a single token of the vocabulary: append it by id,\n"
            "  `tokenizer.convert_tokens_to_ids([...])`. Typed into a prompt, the same text encodes as ordinary characters, so a\n"
            "  user cannot set the preference.\n"
            f"  Conditioning backend: `{self.name}`. {merged}\n"
            '  Prompt format: `"\\n\\nHuman: <request>\\n\\nAssistant:"` then the tags; sample the response after them.'
        )

    def weights_from_ids(self, ids: Tensor) -> Tensor:
        """The (B,K) preference written by the tags in (B,L) token ids: what `preference` must be given."""
        assert self.token_ids is not None, "call attach(tokenizer, model) first"
        table = self.token_ids.to(ids.device)
        hits = (ids[:, :, None, None] == table).any(1)  # (B,K,resolution+1)
        counts = hits.sum(-1)
        if (counts != 1).any():
            row = int((counts != 1).any(-1).nonzero()[0])
            raise ValueError(f"row {row} of the ids does not hold exactly one tag per objective {self.names}")
        return hits.float().argmax(-1).float() / self.resolution

    def quantize(self, weights: Tensor) -> Tensor:
        """Round (B,K) simplex weights to multiples of 1/resolution that still sum to 1 (largest remainder)."""
        scaled = weights.clamp(min=0) / weights.clamp(min=0).sum(-1, keepdim=True).clamp(min=1e-12) * self.resolution
        steps = scaled.floor()
        missing = (self.resolution - steps.sum(-1)).long()  # (B,) units still to hand out
        order = (scaled - steps).argsort(dim=-1, descending=True)
        rank = order.argsort(dim=-1)
        steps = steps + (rank < missing[:, None]).to(steps.dtype)
        return steps / self.resolution

    def tag_ids(self, weights: Tensor) -> Tensor:
        """(B,K) weights -> (B,K) tag token ids."""
        assert self.token_ids is not None, "call attach(tokenizer, model) first"
        steps = (self.quantize(weights) * self.resolution).round().long()
        table = self.token_ids.to(weights.device)
        return table[torch.arange(len(self.names), device=weights.device), steps]

    def format(self, weights: Tensor) -> list[str]:
        """(B,K) weights -> tag strings, for logs and for the generate CLI."""
        steps = (self.quantize(weights) * self.resolution).round().long().tolist()
        return ["".join(self.tag(n, s) for n, s in zip(self.names, row, strict=True)) for row in steps]

    def parse(self, text: str) -> Tensor:
        """Inverse of format: read the K tag values back out of a string."""
        found = dict(re.findall(r"<([^<>:]+):([0-9.]+)>", text))
        missing = [n for n in self.names if n not in found]
        if missing:
            raise ValueError(f"no preference tag for {missing} in {text!r}")
        return torch.tensor([float(found[n]) for n in self.names])

    def condition(self, prompt_ids: Tensor, prompt_mask: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Append the tags to left-padded prompts: (B,P) -> (B,P+K) ids and attention mask."""
        tags = self.tag_ids(weights).to(prompt_ids.device)
        return torch.cat([prompt_ids, tags], 1), torch.cat([prompt_mask, torch.ones_like(tags)], 1)


def _turn_opening_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The last token of the chat template's generation prompt (for ChatML: the newline after `assistant`)."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    return tokenizer(ids, add_special_tokens=False)["input_ids"][-1]


def check_preference(weights: list[float] | Tensor, names: list[str]) -> Tensor:
    """Validate a user-given preference vector; the error names the value and the fix."""
    return checked_preference(weights, len(names), "preference", names)
