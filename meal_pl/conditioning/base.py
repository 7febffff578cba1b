"""What the conditioning backends share: modules that read the current preference, and the hook that
lets a module edit a model's input embeddings.

A preference-aware module lives inside the policy (a submodule, so its parameters train with the policy,
are copied by `copy.deepcopy`, and are swapped by `torch.func.functional_call`). It reads the per-row
preference that `Conditioner.preference(model, w)` sets on it for the duration of a block; outside such a
block it sees no preference and adds nothing that depends on w (w = 0).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn


class PreferenceModule:
    """Mixin for modules that read a (B,K) preference; `PREFERENCE_PARAMS` names their own parameters.

    Each own parameter has a frozen copy (buffer `frozen_<name>`): with peft LoRA the reference policy is
    the same model with its adapters disabled, and `Conditioner.reference` makes the backend use the
    frozen copy there, so pi_ref stays the policy Meal started from (see `Conditioner.snapshot`).
    """

    PREFERENCE_PARAMS: tuple[str, ...] = ()

    def init_preference_state(self) -> None:
        self.preference: Tensor | None = None  # (B,K) quantised weights, set by Conditioner.preference
        self.use_frozen = False
        for name in self.PREFERENCE_PARAMS:
            self.register_buffer(f"frozen_{name}", getattr(self, name).detach().clone())

    def param(self, name: str) -> Tensor:
        """An own parameter, or its frozen copy inside `Conditioner.reference`."""
        return getattr(self, f"frozen_{name}" if self.use_frozen else name)

    def preference_parameters(self) -> Iterator[nn.Parameter]:
        return (getattr(self, name) for name in self.PREFERENCE_PARAMS)

    @torch.no_grad()
    def snapshot(self) -> None:
        for name in self.PREFERENCE_PARAMS:
            getattr(self, f"frozen_{name}").copy_(getattr(self, name))

    def rows(self, batch: int, like: Tensor) -> Tensor | None:
        """The preference of each of `batch` input rows, (batch,K) in like's dtype; None outside a block.

        `generate(num_return_sequences=n)` repeats every row n times (repeat_interleave), so a batch that
        is a multiple of the preference's rows is expanded the same way.
        """
        w = self.preference
        if w is None:
            return None
        if batch != len(w):
            if batch % len(w):
                raise ValueError(f"the model's batch of {batch} rows is not a multiple of the {len(w)} preferences set")
            w = w.repeat_interleave(batch // len(w), 0)
        return w.to(device=like.device, dtype=like.dtype)


def preference_modules(model: nn.Module) -> list[PreferenceModule]:
    """Every preference-aware module inside `model` (through peft wrappers and DDP)."""
    return [m for m in model.modules() if isinstance(m, PreferenceModule)]


def preference_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters that exist only to carry the preference: the tags' embedding rows where peft trains
    them apart from the embedding (LoRA runs) and the conditioning backends' own. Empty when the tag rows train
    inside the whole embedding matrix (full fine-tuning, `tags`)."""
    rows = [p for name, p in model.named_parameters() if "trainable_tokens_delta" in name]
    own = [p for m in preference_modules(model) for p in m.preference_parameters()]
    return [p for p in {id(p): p for p in rows + own}.values() if p.requires_grad]


def parent_of(model: nn.Module, child: nn.Module) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of `child` inside `model`."""
    for module in model.modules():
        for name, sub in module.named_children():
            if sub is child:
                return module, name
    raise ValueError(f"{type(child).__name__} is not a submodule of {type(model).__name__}")


class InputEmbeddingEdit(PreferenceModule, nn.Module):
    """Edits the input embeddings of the model that owns the input embedding layer (e.g. LlamaModel).

    It sits beside the embedding as a child of its owner, with a forward pre-hook on the owner that
    computes `inputs_embeds` itself (through whatever module holds the embedding then, peft's
    trainable-tokens wrapper included) and passes them on edited. Wrapping the embedding module instead
    would rename `embed_tokens.weight` (transformers ties the LM head by that name) and be bypassed by peft,
    whose trainable-tokens layer calls F.embedding on the base weight directly.
    """

    CHILD_NAME = "meal_preference"

    def install(self, model: nn.Module) -> None:
        owner, attr = parent_of(model, model.get_input_embeddings())
        self.embedding_attr = attr
        owner.add_module(self.CHILD_NAME, self)
        owner.register_forward_pre_hook(self.input_hook, with_kwargs=True)

    def uninstall(self, model: nn.Module) -> None:
        """Remove the module and its hook from the model (used by merge)."""
        owner, name = parent_of(model, self)
        for key, hook in list(owner._forward_pre_hooks.items()):
            if getattr(hook, "__self__", None) is self:
                del owner._forward_pre_hooks[key]
                owner._forward_pre_hooks_with_kwargs.pop(key, None)
        delattr(owner, name)

    def input_hook(self, owner: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids, args = args[0], (None, *args[1:])
        embeds = kwargs.get("inputs_embeds")
        if ids is not None:
            embeds = getattr(owner, self.embedding_attr)(ids)
        if embeds is None:
            return None
        kwargs = {**kwargs, "input_ids": None, "inputs_embeds": self.edit(ids, embeds)}
        return args, kwargs

    def edit(self, ids: Tensor | None, embeds: Tensor) -> Tensor:
        """(B,T) ids (None when the caller gave embeddings) and (B,T,H) embeddings -> edited (B,T,H)."""
        raise NotImplementedError


def embedding_stats(model: nn.Module, num_rows: int) -> tuple[Tensor, Tensor]:
    """(mean row, std over entries) of the first num_rows rows of the input embedding: the scale to init at."""
    table = model.get_input_embeddings().weight[:num_rows].detach().float()
    return table.mean(0), table.std()


def untie_output_embeddings(model: nn.Module) -> None:
    """Give the LM head its own copy of a tied input embedding, so editing the input leaves the head unchanged."""
    head, table = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is table.weight:
        head.weight = nn.Parameter(table.weight.detach().clone(), requires_grad=table.weight.requires_grad)
    model.config.tie_word_embeddings = False
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    if text_config is not None:
        text_config.tie_word_embeddings = False
