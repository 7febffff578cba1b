"""The meta-learner's step (METHOD.md steps 7-8) as functions of explicit parameters and tensors.

`meta_gradient` gives dL_out/da_ij through a one-step lookahead of the policy and `selection_surrogate` turns it
into a loss of the PWN's weights; `pwn_step` takes that loss into the PWN and regresses the PWN onto optimised
preference logits; `alternating_batch` builds the loss from the buffered statistics of the `alternating` mode.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import PreTrainedModel

from meal_pl import distributed, losses
from meal_pl.ranges import check_integer, check_number
from meal_pl.rollout import FrontBatch
from meal_pl.sequences import pack, sequence_logprobs

OuterLoss = Callable[[dict[str, Tensor]], Tensor]  # policy parameters -> L_out

LOOKAHEADS = ("second_order", "first_order", "alternating")
OUTERS = ("nondominated_nll", "front", "shortfall")


@dataclass
class MetaConfig:
    """The meta-learner's step (METHOD.md steps 7-8)."""

    lookahead: str = "alternating"  # alternating | second_order | first_order
    inner_lr: float = 0.1  # alpha of the one-step lookahead theta' = theta - alpha grad L_in
    meta_batch_size: int = 16  # non-dominated responses in the held-out meta batch
    buffer_size: int = 64  # past non-dominated responses the meta batch is drawn from
    alternating_every: int = 8  # k: policy steps between PWN updates in `alternating`
    preference_steps: int = 2  # gradient steps on the free preference logits z (0 = off)
    preference_lr: float = 0.5  # step length of a z step (row-normalised gradient)
    regression_weight: float = 1.0  # weight of KL(softmax(z*) || PWN) in the PWN loss
    exploration: float = 0.0  # probability a prompt's preference is a Dirichlet(1) draw
    frozen: bool = False  # ablation: never update the PWN
    outer: str | None = None  # what a good preference is for (METHOD.md step 7); None = the lookahead's own:
    # front (v2) | nondominated_nll (v1) for second_order / first_order; shortfall (the objectives a prompt falls
    # short on) | nondominated_nll (fit each prompt's non-dominated samples) for alternating
    front_prompts: int = 0  # outer=front: held-out prompts per meta step, one grid preference each (0 = the grid's size)
    front_samples: int = 2  # outer=front: J responses per held-out prompt, drawn at theta
    every_n_steps: int = 8  # the meta step runs every n policy steps, on the rollouts gathered since the last one
    max_prompts: int = 0  # prompts of the gathered rollouts the meta step uses (0 = one batch's worth)

    def __post_init__(self) -> None:
        if self.lookahead not in LOOKAHEADS:
            raise ValueError(f"algorithm.meta.lookahead={self.lookahead!r}; choose one of {LOOKAHEADS}")
        if not 0 <= self.exploration <= 1:
            raise ValueError(f"algorithm.meta.exploration={self.exploration} must be in [0, 1]")
        if self.outer is None:
            self.outer = "shortfall" if self.lookahead == "alternating" else "front"
        if self.outer not in OUTERS:
            raise ValueError(f"algorithm.meta.outer={self.outer!r}; choose one of {OUTERS}")
        if self.outer == "shortfall" and self.lookahead != "alternating":
            raise ValueError(f"algorithm.meta.outer=shortfall takes no lookahead, but algorithm.meta.lookahead="
                             f"{self.lookahead}; set algorithm.meta.lookahead=alternating (or outer=front)")
        if self.outer == "front" and self.lookahead == "alternating":
            raise ValueError("algorithm.meta.outer=front differentiates through a lookahead, which algorithm.meta.lookahead="
                             "alternating does not take; set lookahead=second_order or first_order (or outer=shortfall)")
        check_number("algorithm.meta.inner_lr", self.inner_lr, strict=True, note=" (the lookahead's step)")
        check_number("algorithm.meta.preference_lr", self.preference_lr, strict=True)
        check_number("algorithm.meta.regression_weight", self.regression_weight)
        for key, least in (("meta_batch_size", 1), ("buffer_size", 1), ("alternating_every", 1), ("preference_steps", 0)):
            check_integer(f"algorithm.meta.{key}", getattr(self, key), least)
        if self.every_n_steps < 1 or self.front_samples < 2 or self.front_prompts < 0 or self.max_prompts < 0:
            raise ValueError(f"algorithm.meta: every_n_steps={self.every_n_steps} must be >= 1, front_samples="
                             f"{self.front_samples} >= 2 (a baseline needs two), front_prompts and max_prompts >= 0")


def nll_outer(policy: PreTrainedModel, meta_batch: tuple[Tensor, Tensor, Tensor, Tensor], conditioner=None) -> OuterLoss:
    """`nondominated_nll` (v1): L_out(params) = mean NLL of the packed held-out non-dominated responses."""
    prefix, mask, resp, resp_mask = meta_batch
    return lambda p: losses.outer_loss(sequence_logprobs(policy, prefix, mask, resp, p, conditioner), resp_mask)


def front_outer(policy: PreTrainedModel, front: FrontBatch, conditioner=None) -> OuterLoss:
    """`front` (v2): L_out(params) = the policy-gradient surrogate of the grid's expected scalarised reward."""
    def loss(p: dict[str, Tensor]) -> Tensor:
        logp = sequence_logprobs(policy, front.prefix, front.prefix_mask, front.responses, p, conditioner)
        return losses.front_outer_loss(logp, front.resp_mask, front.rewards, front.weights, front.scalarization)
    return loss


def outer_objective(outer: str, policy: PreTrainedModel, front: FrontBatch | None, meta_rows: list, pad_id: int,
                    conditioner=None) -> OuterLoss | None:
    """The configured L_out, or None when this step has nothing to evaluate it on."""
    if outer == "front":
        return front_outer(policy, front, conditioner) if front is not None else None
    if not meta_rows:
        return None
    return nll_outer(policy, pack(meta_rows, pad_id, policy.device), conditioner)


def meta_gradient(policy: PreTrainedModel, inner: dict[str, Tensor], meta_loss: OuterLoss,
                  selection: Tensor, lookahead: str, inner_lr: float, beta: float,
                  prompts: Tensor | None = None, conditioner=None) -> tuple[Tensor, Tensor]:
    """dL_out/da_ij (B,N) through a one-step lookahead, and L_out at theta (for logging).

    theta' = theta - alpha/B sum_ij a_ij grad l_ij(theta) is linear in a, so exactly
    dL_out(theta')/da_ij = -alpha/B <grad l_ij(theta), g> with g = grad L_out(theta') (`second_order`),
    approximated by g = grad L_out(theta) (`first_order`). All inner products come from one
    forward-mode jvp of the per-sample losses along g: no double backward, no per-sample gradients.
    The lookahead runs over the trainable parameters only (LoRA adapters when LoRA is on).
    Under DDP the inner gradient and g are averaged across ranks, so theta' and L_out are the global
    ones and the rank-averaged PWN gradient is the exact gradient of the global L_out.

    `inner` holds the rollout's prefix, prefix_mask, responses, resp_mask and ref_logp; `meta_loss` maps the
    policy's parameters to L_out (`nll_outer`, `front_outer`). Only entries that can move the PWN are computed,
    the rest are 0: a sample with a_ij = 0 was rejected (a_ij stays 0 whatever w is, and it adds nothing to
    L_in), and first_order also skips the prompts outside `prompts` (B,), whose a_ij cannot move or are
    never read by pwn_step. second_order keeps every selected sample: the lookahead sums over all of them.
    """
    params = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    if not params:
        raise RuntimeError("the policy has no trainable parameters for the meta step's lookahead")
    B, N = selection.shape
    active = selection.flatten() > 0
    if prompts is not None and lookahead == "first_order":
        active &= prompts.repeat_interleave(N)
    idx = active.nonzero().squeeze(1)
    sub = {k: v[idx] for k, v in inner.items()}
    a = selection.detach().flatten()[idx]

    def per_sample(p: dict[str, Tensor]) -> Tensor:
        logp = sequence_logprobs(policy, sub["prefix"], sub["prefix_mask"], sub["responses"], p, conditioner)
        _, nll, kl = losses.inner_loss(logp, sub["ref_logp"], sub["resp_mask"], a, beta, B)
        return nll + beta * kl

    names = list(params)
    detached = {n: p.detach() for n, p in params.items()}
    if lookahead == "second_order":
        with torch.no_grad():
            l_out0 = meta_loss(detached)
        g_in = torch.autograd.grad((a * per_sample(params)).sum() / B, list(params.values()))
        g_in = distributed.all_reduce_mean(list(g_in))
        fast = {n: (detached[n] - inner_lr * g).requires_grad_(True) for n, g in zip(names, g_in, strict=True)}
        g_out = torch.autograd.grad(meta_loss(fast), list(fast.values()))
    else:
        l_out0 = meta_loss(params)
        g_out = torch.autograd.grad(l_out0, list(params.values()))
    g_out = distributed.all_reduce_mean(list(g_out))
    tangent = dict(zip(names, g_out, strict=True))
    # sdpa's fused kernels (flash, memory-efficient; CPU and CUDA) have no forward-mode derivative; its math backend
    # (matmul + softmax) has one. Eager attention is not affected.
    with sdpa_kernel(SDPBackend.MATH):
        _, align = torch.func.jvp(per_sample, (detached,), (tangent,))
    grad = torch.zeros(B * N, dtype=align.dtype, device=align.device).index_copy(0, idx, -inner_lr * align / B)
    return grad.view(B, N).detach(), l_out0.detach()


def selection_surrogate(pwn: nn.Module, drawn: Tensor, rewards: Tensor, keep: Tensor, meta_grad: Tensor, tau: float,
                        scalarization: str = "linear") -> Callable[[Tensor], Tensor]:
    """L(w) = sum_ij a_ij(w) dL_out/da_ij: its gradient in the PWN's output w is the exact meta gradient.

    `drawn` (B,K) are the preferences the rollout used; a `dirichlet` proposal's draws are re-expressed as
    functions of the PWN's output (implicit reparameterisation), a `point` proposal's are the output itself.
    """
    return lambda w: losses.pwn_meta_loss(
        losses.selection_weights(pwn.differentiable(w, drawn), rewards, keep, tau, scalarization), meta_grad)


def shortfall_surrogate(shortfall: Tensor) -> Callable[[Tensor], Tensor]:
    """L(w) = mean_i w_i . e_i (`outer=shortfall`): lowered by moving weight to the objectives a prompt falls short on."""
    return lambda w: (w * shortfall.detach()).sum(-1).mean()


def pwn_step(pwn: nn.Module, optimizer: torch.optim.Optimizer, features: Tensor, surrogate: Callable[[Tensor], Tensor],
             cfg: MetaConfig, clip: float, direct: Tensor | None = None) -> dict[str, float]:
    """Steps 7-8 on the PWN: the meta loss `surrogate` of its weights on `features`, plus regression onto optimised z.

    z takes `preference_steps` steps of length `preference_lr` along each prompt's normalised surrogate gradient,
    or, given `direct` (P,K) (outer=shortfall: the shortfall's centred ranks), one step of preference_steps *
    preference_lr times -direct. A per-prompt normalised step keeps only the sign of e_A - e_B (for K=2): a
    majority vote, which skewed rewards (a harmlessness score near 1 with rare drops) tilt for every prompt alike;
    the direct step keeps each prompt's size of shortfall, and symmetric ranks move z by zero on average.
    Called on every rank or on none; the gradients are averaged across ranks before the step.
    """
    T = getattr(pwn, "temperature", 1.0)
    logits = pwn.logits(features)
    meta_loss = surrogate(torch.softmax(logits / T, -1))
    z = logits.detach().clone()
    if direct is not None:
        z = z - cfg.preference_steps * cfg.preference_lr * direct.detach().to(z.dtype)
    else:
        for _ in range(cfg.preference_steps):
            z.requires_grad_(True)
            (gz,) = torch.autograd.grad(surrogate(torch.softmax(z / T, -1)), z)
            z = (z - cfg.preference_lr * gz / gz.norm(dim=-1, keepdim=True).clamp(min=1e-12)).detach()
    regression = losses.preference_regression(torch.softmax(logits / T, -1), torch.softmax(z / T, -1))
    total = meta_loss + cfg.regression_weight * regression
    params = [p for p in pwn.parameters() if p.requires_grad]
    # autograd.grad, not backward: the PWN is no concern of DDP's reducer nor of the policy's optimiser.
    grads = distributed.all_reduce_mean(list(torch.autograd.grad(total, params)))
    for p, grad in zip(params, grads, strict=True):
        p.grad = grad.to(p.dtype)
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"meta/pwn_surrogate": float(meta_loss.detach()), "meta/preference_regression": float(regression.detach()),
            "meta/z_shift": float((torch.softmax(z / T, -1) - torch.softmax(logits.detach() / T, -1)).abs().sum(-1).mean())}


def alternating_batch(buffer: list[tuple[Tensor, ...]], device: torch.device | str, pwn: nn.Module, tau: float,
                      outer: str, scalarization: str = "linear") -> tuple[Tensor, Callable[[Tensor], Tensor], Tensor | None]:
    """`alternating`: the PWN step's (features, surrogate, direct) from k buffered steps' statistics; no lookahead.

    outer=shortfall: move each prompt's weight to the objectives it falls short on (`losses.shortfall` over
    the k steps' prompts). Otherwise: preferences under which soft selection concentrates on the prompt's
    non-dominated samples, i.e. trade-offs the policy can already reach for that prompt (dL/da_ij = -nd_ij / B).
    """
    features, weights, rewards, valid, nd = (torch.cat(t).to(device) for t in zip(*buffer, strict=True))
    if outer == "shortfall":
        shortfall = losses.shortfall(rewards, valid, weights)
        return features, shortfall_surrogate(shortfall), shortfall
    return features, selection_surrogate(pwn, weights, rewards, valid, -nd.float() / len(features), tau, scalarization), None


def buffer_rows(prefix: Tensor, prefix_mask: Tensor, responses: Tensor, resp_mask: Tensor, non_dominated: Tensor
                ) -> list[tuple[list[int], list[int]]]:
    """The (prefix ids, response ids) of a rollout's non-dominated, non-empty samples: future meta batches."""
    rows = (non_dominated.flatten() & resp_mask.bool().any(-1)).nonzero().squeeze(1)

    def ragged(ids: Tensor, mask: Tensor) -> list[list[int]]:
        # The kept rows' real tokens in one transfer, then cut by row length (no tensor op per sample).
        m = mask[rows].bool()
        flat = iter(ids[rows][m].tolist())
        return [list(itertools.islice(flat, n)) for n in m.sum(-1).tolist()]

    return list(zip(ragged(prefix, prefix_mask), ragged(responses, resp_mask), strict=True))
