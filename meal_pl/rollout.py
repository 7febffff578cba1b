"""The rollout: what one training batch's generate -> score -> select steps hand the module's update."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Rollout:
    """One batch of B prompts, N responses each, K objectives (S = B*N sequences, T response tokens).

    Produced by a rollout callback (meal_pl/callbacks/rejection_sampling.py) at the start of the batch,
    consumed by MealModule.training_step: the meta step reads `features`, `rewards`, `keep`, `explore` and
    `selection` (the selection weights a_ij are re-derived from the PWN's w with the sampler's tau, which is
    how the meta gradient reaches the PWN), the base step reads the training sequences and `ref_logp`.
    """

    prompts: list[str]
    features: Tensor  # (B,F) prompt features h(x), the PWN's input (zeros for static preference sources)
    weights: Tensor  # (B,K) the preferences proposed (PWN or exploration), detached
    explore: Tensor  # (B,) True where the preference is an exploration draw (or static: no PWN)
    responses: Tensor  # (S,T) generated ids, padded after EOS
    resp_mask: Tensor  # (S,T) response tokens up to and including EOS
    raw: Tensor  # (S,K) raw rewards (NaN/inf where a backend failed)
    rewards: Tensor  # (B,N,K) normalised rewards, invalid entries 0
    valid: Tensor  # (B,N) all K rewards finite
    keep: Tensor  # (B,N) survived rejection sampling
    selection: Tensor  # (B,N) selection weights a_ij(w), detached
    prefix: Tensor  # (S,P+K) prompt + the training tags (relabelled or requested) of each sequence
    prefix_mask: Tensor  # (S,P+K)
    ref_logp: Tensor  # (S,T) log pi_ref of the response tokens under `prefix`
    non_dominated: Tensor  # (B,N) valid and dominated by no other sample of the prompt
    gen_time: float  # seconds spent generating
    counts: dict[str, int | Tensor] = field(default_factory=dict)  # this batch's invalid_rewards, truncated_prompts

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, N, K)."""
        return tuple(self.rewards.shape)

    def inner(self) -> dict[str, Tensor]:
        """The training sequences, as the meta step's lookahead takes them."""
        return {"prefix": self.prefix, "prefix_mask": self.prefix_mask, "responses": self.responses,
                "resp_mask": self.resp_mask, "ref_logp": self.ref_logp}
