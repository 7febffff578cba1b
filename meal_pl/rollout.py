"""The rollout: what one training batch's generate -> score -> select steps hand the module's update."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor


@dataclass
class FrontBatch:
    """Held-out samples for the `front` outer objective: M prompts, each under one grid preference, J samples."""

    prefix: Tensor  # (M*J,P+K) prompt + the grid preference's tags, prompt-major
    prefix_mask: Tensor  # (M*J,P+K)
    responses: Tensor  # (M*J,T) drawn at theta
    resp_mask: Tensor  # (M*J,T)
    rewards: Tensor  # (M,J,K) normalised (NaN where a backend failed)
    weights: Tensor  # (M,K) the grid preference of each prompt
    scalarization: str = "linear"  # the sampler's: the grid's reward is scored as selection scores it


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
    front: FrontBatch | None = None  # held-out samples for algorithm.meta.outer=front, on meta-step batches

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, N, K)."""
        return tuple(self.rewards.shape)

    def inner(self) -> dict[str, Tensor]:
        """The training sequences, as the meta step's lookahead takes them."""
        return {"prefix": self.prefix, "prefix_mask": self.prefix_mask, "responses": self.responses,
                "resp_mask": self.resp_mask, "ref_logp": self.ref_logp}


def pad_to(x: Tensor, width: int, value: float, left: bool) -> Tensor:
    """(S,T) -> (S,width), padded with `value` on the left or the right."""
    extra = width - x.shape[1]
    if extra <= 0:
        return x
    pad = torch.full((x.shape[0], extra), value, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x] if left else [x, pad], 1)


def concat_rollouts(rollouts: list[Rollout], pad_id: int) -> Rollout:
    """One rollout of all prompts of `rollouts` (prefixes left-padded, responses right-padded to one width)."""
    if len(rollouts) == 1:
        return rollouts[0]
    P = max(r.prefix.shape[1] for r in rollouts)
    T = max(r.responses.shape[1] for r in rollouts)
    pads = {"prefix": (P, pad_id, True), "prefix_mask": (P, 0, True), "responses": (T, pad_id, False),
            "resp_mask": (T, False, False), "ref_logp": (T, 0.0, False)}
    merged = {}
    for f in fields(Rollout):
        values = [getattr(r, f.name) for r in rollouts]
        if f.name in pads:
            width, value, left = pads[f.name]
            merged[f.name] = torch.cat([pad_to(v, width, value, left) for v in values])
        elif isinstance(values[0], Tensor):
            merged[f.name] = torch.cat(values)
        elif f.name == "prompts":
            merged[f.name] = [p for v in values for p in v]
        elif f.name == "gen_time":
            merged[f.name] = sum(values)
        elif f.name == "counts":
            merged[f.name] = {}
        else:  # front: the newest batch's
            merged[f.name] = values[-1]
    return Rollout(**merged)


def select_prompts(r: Rollout, index: Tensor) -> Rollout:
    """The rollout restricted to the prompts `index` (and their N samples each)."""
    B, N, _ = r.shape
    rows = (index[:, None] * N + torch.arange(N, device=index.device)).flatten()
    out = {}
    for f in fields(Rollout):
        v = getattr(r, f.name)
        if isinstance(v, Tensor):
            out[f.name] = v[index] if v.shape[0] == B else v[rows]
        elif f.name == "prompts":
            out[f.name] = [v[i] for i in index.tolist()]
        else:
            out[f.name] = v
    return Rollout(**out)


def gather(rollouts: list[Rollout], pad_id: int, cap: int) -> Rollout:
    """`rollouts` as one, at most `cap` prompts of them drawn at random (in order); the newest front batch."""
    r, front = concat_rollouts(rollouts, pad_id), rollouts[-1].front
    if len(r.prompts) > cap:
        r = select_prompts(r, torch.randperm(len(r.prompts), device=r.rewards.device)[:cap].sort().values)
    r.front = front
    return r
