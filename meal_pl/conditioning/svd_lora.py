"""`svd_lora`: the tags, plus Panacea's SVD-LoRA (arXiv 2402.02030) with w in the singular values.

Each chosen linear layer computes W x + U diag(sigma(w)) V x with sigma(w) = [sigma_1..sigma_r, w_1 s_1, ..,
w_K s_K]: r learned singular values shared by all preferences, and K preference singular values, each
w_k times a learned per-layer scale s_k. Export at one w folds the adapter into W.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel

from meal_pl.conditioning.base import PreferenceModule, parent_of, preference_modules
from meal_pl.conditioning.tags import TextTagConditioner

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class SVDLoRALinear(PreferenceModule, nn.Linear):
    """An nn.Linear (same `weight`/`bias` parameters, same name in the model) with a preference-scaled SVD adapter.

    Being an nn.Linear keeps peft's LoRA able to target it by name and wrap it as its base layer.
    """

    PREFERENCE_PARAMS = ("svd_u", "svd_v", "svd_sigma", "svd_scale")

    def __init__(self, linear: nn.Linear, rank: int, num_objectives: int, init_scale: float) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: reuse the layer's weight instead of allocating one
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        width = rank + num_objectives
        like = dict(device=linear.weight.device, dtype=linear.weight.dtype)
        # Orthonormal U (out, r+K) and V (r+K, in), learned singular values 0, preference scales s_k =
        # init_scale: the preference path changes the output from step 0 and every part gets a gradient.
        u = torch.linalg.qr(torch.randn(self.out_features, width))[0]
        v = torch.linalg.qr(torch.randn(self.in_features, width))[0].T
        self.svd_u = nn.Parameter(u.to(**like))
        self.svd_v = nn.Parameter(v.to(**like))
        self.svd_sigma = nn.Parameter(torch.zeros(rank, **like))
        self.svd_scale = nn.Parameter(torch.full((num_objectives,), float(init_scale), **like))
        self.train(linear.training)
        self.init_preference_state()

    def singular_values(self, weights: Tensor) -> Tensor:
        """(B,K) preferences -> (B, r+K) singular values."""
        sigma = self.param("svd_sigma").to(weights.dtype).expand(len(weights), -1)
        return torch.cat([sigma, weights * self.param("svd_scale").to(weights.dtype)], -1)

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        w = self.rows(len(x), x)
        if w is None:
            w = x.new_zeros(len(x), len(self.svd_scale))  # no preference set: only the shared values act
        sigma = self.singular_values(w).view(len(x), *([1] * (x.dim() - 2)), -1)  # per row, over positions
        return out + F.linear(F.linear(x, self.param("svd_v")) * sigma, self.param("svd_u"))

    def merged_weight(self, weights: Tensor) -> Tensor:
        """W + U diag(sigma(w)) V for one (K,) preference."""
        sigma = self.singular_values(weights[None].to(self.weight.dtype))[0]
        return self.weight + (self.param("svd_u") * sigma) @ self.param("svd_v")


class SVDLoRAConditioner(TextTagConditioner):
    """Tags plus preference-scaled SVD adapters on the named linear layers."""

    name = "svd_lora"
    reads_preference = True

    def __init__(
        self,
        names: list[str],
        resolution: int = 20,
        rank: int = 4,
        target_modules: list[str] | tuple[str, ...] = LLAMA_PROJECTIONS,
        init_scale: float = 0.1,
    ) -> None:
        super().__init__(names, resolution)
        if rank < 0:
            raise ValueError(f"conditioning.rank={rank} must be >= 0")
        self.rank, self.target_modules, self.init_scale = rank, list(target_modules), init_scale

    def install(self, model: PreTrainedModel, num_plain_rows: int) -> None:
        targets = [
            (name, m) for name, m in model.named_modules()
            if name.rsplit(".", 1)[-1] in self.target_modules and type(m) is nn.Linear
        ]
        if not targets:
            raise ValueError(f"conditioning.target_modules={self.target_modules} matches no nn.Linear layer of the model")
        with torch.random.fork_rng():
            torch.manual_seed(num_plain_rows + 3)
            for _, linear in targets:
                parent, attr = parent_of(model, linear)
                setattr(parent, attr, SVDLoRALinear(linear, self.rank, len(self.names), self.init_scale))

    def merge_into(self, model: PreTrainedModel, weights: Tensor) -> None:
        for layer in preference_modules(model):
            if isinstance(layer, SVDLoRALinear):
                plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                  device="meta")
                plain.weight = nn.Parameter(layer.merged_weight(weights).detach(), requires_grad=layer.weight.requires_grad)
                plain.bias = layer.bias
                plain.train(layer.training)
                parent, attr = parent_of(model, layer)
                setattr(parent, attr, plain)
