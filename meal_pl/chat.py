"""Prompts through an instruct model's own chat template (`model.chat_template: true`).

The data are HH dialogues (`\\n\\nHuman: ...\\n\\nAssistant:`). A chat-tuned model (SmolLM2-Instruct, Qwen
Instruct) answers that raw text poorly, so when the model config says it has a chat template, each prompt
is turned into messages and rendered with the tokenizer's template, ending where the assistant's turn
begins. Rewards still see the HH text; only what the policy reads changes. The switch travels on the
tokenizer (set by train.build), so every place that encodes prompts (`sampling.encode_prompts`) agrees.
"""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizerBase

FLAG = "meal_chat_template"
_TURN = re.compile(r"\n\n(Human|Assistant):")


def use_chat_template(tokenizer: PreTrainedTokenizerBase, enabled: bool) -> None:
    """Switch chat formatting on or off for this tokenizer; refuse a model without a template."""
    if enabled and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "model.chat_template=true but this model's tokenizer has no chat template; set model.chat_template=false"
        )
    setattr(tokenizer, FLAG, bool(enabled))


def hh_to_messages(text: str) -> list[dict[str, str]]:
    """HH text -> chat messages; the final empty `Assistant:` turn is the one the model writes."""
    parts = _TURN.split(text if text.startswith("\n\n") else "\n\n" + text.lstrip())
    messages = []
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    if not messages:  # not HH text: the whole text is the request
        messages = [{"role": "user", "content": text.strip()}]
    return messages


def format_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[str]:
    """The prompts as the policy should read them: unchanged, or rendered with the chat template."""
    if not getattr(tokenizer, FLAG, False):
        return prompts
    return [tokenizer.apply_chat_template(hh_to_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts]
