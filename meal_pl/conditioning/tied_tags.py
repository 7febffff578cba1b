"""`tied_tags`: the same tag tokens, but the embedding of `<k:v>` is a_k + v * d_k.

Every value of objective k is a function of the same two learned vectors, so every sample trains them
and neighbouring values stay close (ordinal). The tag rows of the embedding table are overridden at the
input; export writes the materialised rows into the table.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from meal_pl.conditioning.base import (
    InputEmbeddingEdit,
    embedding_stats,
    preference_modules,
    untie_output_embeddings,
)
from meal_pl.conditioning.tags import TextTagConditioner


class TiedTagEmbedding(InputEmbeddingEdit):
    """Replaces the input embedding of each tag token `<k:v>` by offset[k] + v * slope[k]."""

    PREFERENCE_PARAMS = ("offset", "slope")

    def __init__(self, token_ids: Tensor, offset: Tensor, slope: Tensor) -> None:
        super().__init__()
        K, values = token_ids.shape
        self.offset = nn.Parameter(offset)  # (K,H) a_k
        self.slope = nn.Parameter(slope)  # (K,H) d_k
        flat = token_ids.flatten()
        order = flat.argsort()
        # Sorted tag ids and, for each, its objective and value: a searchsorted finds the tags in any ids.
        self.register_buffer("sorted_ids", flat[order], persistent=False)
        self.register_buffer("objective", torch.arange(K).repeat_interleave(values)[order], persistent=False)
        self.register_buffer("value", (torch.arange(values).float() / (values - 1)).repeat(K)[order], persistent=False)
        self.init_preference_state()

    def tag_rows(self) -> Tensor:
        """(K*(resolution+1), H) materialised rows, in the order of `sorted_ids`."""
        return self.param("offset")[self.objective] + self.value[:, None] * self.param("slope")[self.objective]

    def edit(self, ids: Tensor | None, embeds: Tensor) -> Tensor:
        if ids is None:
            return embeds
        pos = torch.searchsorted(self.sorted_ids, ids.contiguous()).clamp(max=len(self.sorted_ids) - 1)
        is_tag = self.sorted_ids[pos] == ids  # (B,T)
        rows = self.tag_rows().to(embeds.dtype)[pos]  # (B,T,H)
        return torch.where(is_tag[..., None], rows, embeds)


class TiedTagConditioner(TextTagConditioner):
    """Tags whose embeddings are a_k + v * d_k (learned per objective, shared by all values)."""

    name = "tied_tags"

    def install(self, model: PreTrainedModel, num_plain_rows: int) -> None:
        mean, std = embedding_stats(model, num_plain_rows)
        K, H = len(self.names), mean.shape[0]
        with torch.random.fork_rng():
            torch.manual_seed(num_plain_rows + 1)
            # Rows at the scale of the table: a_k near the mean row (as the free tags), v * d_k a spread of
            # about one half-std between v=0 and v=1, so values are distinct from the first step.
            offset = mean + 0.5 * std * torch.randn(K, H)
            slope = 0.5 * std * torch.randn(K, H)
        weight = model.get_input_embeddings().weight
        edit = TiedTagEmbedding(self.token_ids, offset.to(weight), slope.to(weight)).to(weight.device)
        edit.install(model)

    def merge_into(self, model: PreTrainedModel, weights: Tensor) -> None:
        for edit in preference_modules(model):
            if isinstance(edit, TiedTagEmbedding):
                # The LM head keeps its tag rows (they are suppressed at generation): untie so it is unchanged.
                untie_output_embeddings(model)
                with torch.no_grad():
                    table = model.get_input_embeddings().weight
                    table[edit.sorted_ids] = edit.tag_rows().to(table)
                edit.uninstall(model)
