"""`embedding`: the tags, plus a learned linear map of w added to the input embedding of every position.

No position has to attend to a distant tag to know w. Export at one w adds map(w) to every row of the
input embedding table, which is the same constant at every position.
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


class PreferenceEmbedding(InputEmbeddingEdit):
    """embeds + w @ proj.T at every position: (B,T,H) + (B,1,H)."""

    PREFERENCE_PARAMS = ("proj",)

    def __init__(self, proj: Tensor) -> None:
        super().__init__()
        self.proj = nn.Parameter(proj)  # (H,K), as nn.Linear(K, H, bias=False).weight
        self.init_preference_state()

    def shift(self, weights: Tensor) -> Tensor:
        """(B,K) -> (B,H) the vector added to every position."""
        return weights @ self.param("proj").to(weights.dtype).T

    def edit(self, ids: Tensor | None, embeds: Tensor) -> Tensor:
        w = self.rows(len(embeds), embeds)
        return embeds if w is None else embeds + self.shift(w)[:, None, :]


class EmbeddingConditioner(TextTagConditioner):
    """Tags plus a learned map of w added to the input embeddings."""

    name = "embedding"
    reads_preference = True

    def install(self, model: PreTrainedModel, num_plain_rows: int) -> None:
        _, std = embedding_stats(model, num_plain_rows)
        weight = model.get_input_embeddings().weight
        with torch.random.fork_rng():
            torch.manual_seed(num_plain_rows + 2)
            # N(0, std of the table) per entry: map(e_k) is a row-sized shift from the first step (a smaller
            # init steered far less in a probe).
            proj = std * torch.randn(weight.shape[1], len(self.names))
        PreferenceEmbedding(proj.to(weight)).to(weight.device).install(model)

    def merge_into(self, model: PreTrainedModel, weights: Tensor) -> None:
        for edit in preference_modules(model):
            if isinstance(edit, PreferenceEmbedding):
                if weights.any():  # w = 0 (the reference's bare prompts) shifts nothing: keep the tie
                    untie_output_embeddings(model)  # the shift belongs to the input only
                    with torch.no_grad():
                        table = model.get_input_embeddings().weight
                        table += edit.shift(weights[None].to(table))[0]
                edit.uninstall(model)
