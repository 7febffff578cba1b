"""The preference-weight-net (meta-learner) and the static preference sources it is compared with."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions.dirichlet import _Dirichlet_backward

from meal_pl.ranges import check_integer

PROPOSALS = ("point", "dirichlet")


class PreferenceWeightNet(nn.Module):
    """w = softmax(MLP(h(x)) / T): adaptive preference weights on the simplex from prompt features.

    `proposal` says what a training prompt is given (METHOD.md step 1): `point` gives the PWN's w itself;
    `dirichlet` draws from Dirichlet(alpha(x)) with alpha_k = floor + (concentration - K floor) w_k, a
    distribution whose mean the PWN moves while every alpha_k >= floor keeps the whole simplex covered (at the
    uniform w and the defaults, Dirichlet(1): the RiC distribution). The policy follows only the preferences
    it is trained under, so a point proposal starves the extremes; the draw is differentiable in w
    (`dirichlet_at`), so the meta gradient still reaches the PWN.
    """

    learnable = True

    def __init__(self, feature_dim: int, num_objectives: int, hidden_dim: int = 64, temperature: float = 1.0,
                 proposal: str = "dirichlet", concentration: float | None = None, floor: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"algorithm.pwn.temperature={temperature} must be > 0")
        # 0 hidden units would leave the output bias alone: a preference that cannot read the prompt.
        check_integer("algorithm.pwn.hidden_dim", hidden_dim, 1)
        if proposal not in PROPOSALS:
            raise ValueError(f"algorithm.pwn.proposal={proposal!r}; choose one of {PROPOSALS}")
        concentration = float(num_objectives if concentration is None else concentration)
        if not (0 < floor and floor * num_objectives < concentration):
            raise ValueError(f"algorithm.pwn.floor={floor} must be > 0 and K*floor < algorithm.pwn.concentration={concentration}")
        self.temperature, self.proposal, self.concentration, self.floor = temperature, proposal, concentration, floor
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
        """(B,F) -> (B,K) preference logits z, in float32 even under autocast (bf16-mixed): the preference, its
        Dirichlet draw and the meta-gradient through it stay in float32 (torch's Dirichlet has no bf16 kernel)."""
        with torch.autocast(features.device.type, enabled=False):
            return self.mlp(features.to(self.mlp[1].weight.dtype))

    def weights_from_logits(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits / self.temperature, -1)

    def forward(self, features: Tensor) -> Tensor:
        return self.weights_from_logits(self.logits(features))

    def alpha(self, weights: Tensor) -> Tensor:
        """(B,K) Dirichlet concentrations of the `dirichlet` proposal, with mean-ish `weights` and a floor."""
        return self.floor + (self.concentration - self.floor * weights.shape[-1]) * weights

    def sample(self, weights: Tensor) -> Tensor:
        """The training preferences of prompts whose PWN output is `weights` (B,K)."""
        if self.proposal == "point":
            return weights
        return torch.distributions.Dirichlet(self.alpha(weights.float())).sample()

    def differentiable(self, weights: Tensor, drawn: Tensor) -> Tensor:
        """`drawn` (B,K), as sample() gave it, as a differentiable function of the PWN's `weights` (B,K)."""
        if self.proposal == "point":
            return weights
        with torch.autocast(weights.device.type, enabled=False):
            return dirichlet_at(self.alpha(weights.float()), drawn)


class _DirichletAt(torch.autograd.Function):
    """x ~ Dirichlet(alpha) drawn earlier, returned as a function of alpha with rsample's implicit gradient."""

    @staticmethod
    def forward(ctx, alpha: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(x, alpha)
        return x.clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        x, alpha = ctx.saved_tensors
        return _Dirichlet_backward(x, alpha, grad_output), None


def dirichlet_at(alpha: Tensor, x: Tensor) -> Tensor:
    """The Dirichlet(alpha) draw `x`, differentiable in alpha exactly as `Dirichlet(alpha).rsample()` is."""
    return _DirichletAt.apply(alpha, x.detach().to(alpha.dtype))


class UniformPreferences(nn.Module):
    """RiC-style static preferences: every prompt gets a fresh Dirichlet(alpha) draw; nothing is learned."""

    learnable = False

    def __init__(self, feature_dim: int, num_objectives: int, alpha: float = 1.0) -> None:
        super().__init__()
        self.concentration = torch.full((num_objectives,), float(alpha))

    def forward(self, features: Tensor) -> Tensor:
        dist = torch.distributions.Dirichlet(self.concentration.to(features.device))
        return dist.sample((features.shape[0],))


def checked_preference(values, num_objectives: int, key: str, names: list[str] | None = None) -> Tensor:
    """`values` as a (K,) preference on the simplex; a one-line ValueError naming `key`, the value and the fix
    otherwise (config weights and the CLIs' `preference=` alike)."""
    w = torch.as_tensor(values, dtype=torch.float32).flatten()
    given = f"{key}=[" + ",".join(f"{v:g}" for v in w.tolist()) + "]"  # as typed, not float32's 0.800000011920929
    if w.numel() != num_objectives:
        named = f" ({names})" if names else ""
        raise ValueError(f"{given} has {w.numel()} values but the objective has {num_objectives}{named}; give one per "
                         "objective, summing to 1")
    if (w < 0).any() or not torch.isfinite(w).all():
        raise ValueError(f"{given} has a negative or non-finite value; give weights >= 0 that sum to 1")
    if abs(float(w.sum()) - 1) > 1e-3:
        raise ValueError(f"{given} sums to {float(w.sum()):.4f}; give weights that sum to 1")
    return w


class FixedPreferences(nn.Module):
    """Linear scalarisation: one fixed preference for every prompt."""

    learnable = False

    def __init__(self, feature_dim: int, num_objectives: int, weights: list[float] | None = None) -> None:
        super().__init__()
        w = torch.full((num_objectives,), 1.0 / num_objectives) if weights is None else checked_preference(weights, num_objectives, "algorithm.pwn.weights")
        self.register_buffer("fixed", w.float())

    def forward(self, features: Tensor) -> Tensor:
        return self.fixed.expand(features.shape[0], -1).to(features.device)


class GroupPreferences(nn.Module):
    """A hand-set preference distribution per prompt group (the data's `group` field): the static,
    prompt-reading baseline a learned PWN is measured against. A prompt of group g gets a draw from
    Dirichlet(floor + (concentration - K floor) means[g]), the PWN's `dirichlet` proposal at the mean the user
    names; a group not named, or a prompt without a group, gets the uniform mean. Its input is group codes
    (`codes`), not prompt features; nothing is learned."""

    learnable = False

    def __init__(self, feature_dim: int, num_objectives: int, means: dict[str, list[float]] | None = None,
                 floor: float = 0.5, concentration: float | None = None) -> None:
        super().__init__()
        if not means:
            raise ValueError("algorithm.pwn.means is empty; name a mean preference per prompt group, "
                             "e.g. 'algorithm.pwn.means={a:[0.3,0.7],b:[0.7,0.3]}'")
        concentration = float(num_objectives if concentration is None else concentration)
        if not (0 < floor and floor * num_objectives < concentration):
            raise ValueError(f"algorithm.pwn.floor={floor} must be > 0 and K*floor < algorithm.pwn.concentration={concentration}")
        self.groups = sorted(means)
        rows = [checked_preference(means[g], num_objectives, f"algorithm.pwn.means.{g}") for g in self.groups]
        rows.append(torch.full((num_objectives,), 1.0 / num_objectives))  # code -1: no named group
        self.register_buffer("alpha_table", floor + (concentration - floor * num_objectives) * torch.stack(rows))

    def codes(self, groups: list[str | None]) -> Tensor:
        """(B,1) the index of each prompt's group in the named groups, -1 where it names none."""
        index = {g: i for i, g in enumerate(self.groups)}
        codes = [index.get(g, -1) for g in groups]
        if all(c < 0 for c in codes):
            raise ValueError(f"algorithm.pwn.means names groups {self.groups}, but no prompt of the batch is in one "
                             f"(their groups: {sorted({str(g) for g in groups})}); name the data's groups")
        return torch.tensor(codes, dtype=torch.float32)[:, None]

    def forward(self, codes: Tensor) -> Tensor:
        alpha = self.alpha_table[codes[:, 0].long()]  # -1 indexes the last row, the uniform mean
        return torch.distributions.Dirichlet(alpha.to(codes.device)).sample()


def propose(pwn: nn.Module, features: Tensor, exploration: float) -> tuple[Tensor, Tensor]:
    """METHOD.md step 1: (B,K) preferences and the (B,) mask of exploring prompts.

    A learnable PWN's w_i is replaced by a Dirichlet(1) draw with probability `exploration`; a static
    source (uniform, fixed) is all exploration: no prompt carries a preference the meta step could move.
    """
    w = pwn(features)
    if not getattr(pwn, "learnable", False):
        return w, torch.ones(len(w), dtype=torch.bool, device=w.device)
    w = pwn.sample(w)
    explore = torch.rand(len(w), device=w.device) < exploration
    draws = torch.distributions.Dirichlet(torch.ones_like(w[0])).sample((len(w),))
    return torch.where(explore[:, None], draws, w), explore
