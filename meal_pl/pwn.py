"""The preference-weight-net (meta-learner) and the static preference sources it is compared with."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PreferenceWeightNet(nn.Module):
    """w = softmax(MLP(h(x)) / T): adaptive preference weights on the simplex from prompt features."""

    learnable = True

    def __init__(self, feature_dim: int, num_objectives: int, hidden_dim: int = 64, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"pwn.temperature={temperature} must be > 0")
        self.temperature = temperature
        self.mlp = nn.Sequential(
            nn.LayerNorm(feature_dim),
            nn.Linear(feature_dim, hidden_dim),
            nn.Tanh(),
            nn.Linear(hidden_dim, num_objectives),
        )
        # Start at the uniform preference: the meta step, not the init, decides where weights go.
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def logits(self, features: Tensor) -> Tensor:
        """(B,F) -> (B,K) preference logits z."""
        return self.mlp(features.to(self.mlp[1].weight.dtype))

    def weights_from_logits(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits / self.temperature, -1)

    def forward(self, features: Tensor) -> Tensor:
        return self.weights_from_logits(self.logits(features))


class UniformPreferences(nn.Module):
    """RiC-style static preferences: every prompt gets a fresh Dirichlet(alpha) draw; nothing is learned."""

    learnable = False

    def __init__(self, feature_dim: int, num_objectives: int, alpha: float = 1.0) -> None:
        super().__init__()
        self.concentration = torch.full((num_objectives,), float(alpha))

    def forward(self, features: Tensor) -> Tensor:
        dist = torch.distributions.Dirichlet(self.concentration.to(features.device))
        return dist.sample((features.shape[0],))


class FixedPreferences(nn.Module):
    """Linear scalarisation: one fixed preference for every prompt."""

    learnable = False

    def __init__(self, feature_dim: int, num_objectives: int, weights: list[float] | None = None) -> None:
        super().__init__()
        w = torch.full((num_objectives,), 1.0 / num_objectives) if weights is None else torch.tensor(weights, dtype=torch.float32).flatten()
        given = f"algorithm.pwn.weights={[round(v, 6) for v in w.tolist()]}"
        if w.numel() != num_objectives:
            raise ValueError(f"{given} has {w.numel()} values; give one per objective ({num_objectives}), summing to 1")
        if (w < 0).any() or not torch.isfinite(w).all():
            raise ValueError(f"{given} has a negative or non-finite value; give weights >= 0 that sum to 1")
        if abs(float(w.sum()) - 1) > 1e-3:
            raise ValueError(f"{given} sums to {float(w.sum()):.4f}; give weights that sum to 1")
        self.register_buffer("fixed", w.float())

    def forward(self, features: Tensor) -> Tensor:
        return self.fixed.expand(features.shape[0], -1).to(features.device)


def propose(pwn: nn.Module, features: Tensor, exploration: float) -> tuple[Tensor, Tensor]:
    """METHOD.md step 1: (B,K) preferences and the (B,) mask of exploring prompts.

    A learnable PWN's w_i is replaced by a Dirichlet(1) draw with probability `exploration`; a static
    source (uniform, fixed) is all exploration: no prompt carries a preference the meta step could move.
    """
    w = pwn(features)
    if not getattr(pwn, "learnable", False):
        return w, torch.ones(len(w), dtype=torch.bool, device=w.device)
    explore = torch.rand(len(w), device=w.device) < exploration
    draws = torch.distributions.Dirichlet(torch.ones_like(w[0])).sample((len(w),))
    return torch.where(explore[:, None], draws, w), explore
