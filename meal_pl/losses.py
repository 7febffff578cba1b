"""Meal's losses and selection rules as pure functions of tensors (METHOD.md steps 4-8).

Shapes: B prompts, N samples per prompt, K objectives, S = B*N sequences, T response tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dominated(rewards: Tensor, valid: Tensor | None = None) -> Tensor:
    """(B,N,K) -> (B,N) True where another valid sample of the same prompt is >= everywhere and > somewhere."""
    a, b = rewards[:, :, None, :], rewards[:, None, :, :]  # sample j vs sample l
    beats = (b >= a).all(-1) & (b > a).any(-1)  # (B,N,N): l dominates j
    if valid is not None:
        beats = beats & valid[:, None, :]
    return beats.any(-1)


SCALARIZATIONS = ("linear", "tchebycheff")


def scalarize(weights: Tensor, rewards: Tensor, method: str = "linear", valid: Tensor | None = None) -> Tensor:
    """A response's score under preference w_i: (B,K),(B,N,K) -> (B,N).

    `linear`: w_i . R_ij. On a linear front its argmax is an endpoint for almost every w, so a policy trained
    on it learns two trade-offs, not the ones in between. `tchebycheff`: -max_k w_ik (z_k - R_ijk), the largest
    weighted shortfall from the ideal point z (a constant);
    its argmax is the sample whose weighted shortfalls are balanced, an interior point for an interior w. The
    ideal point is the batch's best valid reward per objective: a prompt's own N samples lie close together, and
    an ideal point among them pushes selection outwards along the larger weight just as the linear score does.
    """
    if method == "linear":
        return (rewards * weights[:, None, :]).sum(-1)
    if method != "tchebycheff":
        raise ValueError(f"algorithm.sampler.scalarization={method!r}; choose one of {SCALARIZATIONS}")
    usable = torch.isfinite(rewards).all(-1) if valid is None else valid & torch.isfinite(rewards).all(-1)
    masked = rewards.detach().masked_fill(~usable[..., None], float("-inf"))
    ideal = masked.flatten(0, 1).amax(0)  # (K,)
    # Non-finite gaps (invalid samples, prompts with none valid) become 0 so no NaN reaches w's gradient;
    # such samples are masked out of every selection anyway.
    gap = (ideal - rewards.detach()).nan_to_num(0.0, posinf=0.0, neginf=0.0).masked_fill(~usable[..., None], 0.0)
    return -(weights[:, None, :] * gap).amax(-1)


def rejection_mask(
    weights: Tensor, rewards: Tensor, valid: Tensor, drop_dominated: bool = True, quantile: float = 0.0,
    scalarization: str = "linear",
) -> Tensor:
    """(B,N) samples kept by rejection sampling: valid, not dominated, scalarised reward >= per-prompt quantile.

    The scalarised best of a prompt is never rejected (a positive-weight scalarisation's argmax is non-dominated
    and above any quantile), so every prompt with a valid sample keeps at least one.
    """
    keep = valid.clone()
    if drop_dominated:
        keep &= ~dominated(rewards, valid)
    if quantile > 0:
        scores = scalarize(weights, rewards, scalarization, valid).masked_fill(~valid, float("nan"))
        threshold = torch.nanquantile(scores, quantile, dim=1, keepdim=True)
        keep &= scores >= threshold.nan_to_num(float("-inf"))
    return keep


def selection_weights(weights: Tensor, rewards: Tensor, keep: Tensor, tau: float, scalarization: str = "linear"
                      ) -> Tensor:
    """a_ij(w_i) = softmax_j(s(w_i, R_ij) / tau) over kept samples, s = `scalarize`; tau == 0 is hard best-of-N. (B,N)."""
    scores = scalarize(weights, rewards, scalarization, keep).masked_fill(~keep, float("-inf"))
    if tau <= 0:
        best = scores.argmax(-1)
        hard = F.one_hot(best, scores.shape[-1]).to(rewards.dtype)
        return hard * keep.any(-1, keepdim=True)
    return torch.softmax(scores / tau, -1).nan_to_num(0.0)  # rows with nothing kept -> 0


def relabel(rewards: Tensor, tau_w: float) -> Tensor:
    """The trade-off a response achieved, w_hat = softmax(R / tau_w) over objectives. (..., K)."""
    return torch.softmax(rewards / tau_w, -1)


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log pi(target_t | prefix) from logits aligned with targets: (S,T,V),(S,T) -> (S,T)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits -> fp32; fp64 stays
    return torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the last dim where mask is set; (S,T) -> (S,), empty rows give 0."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token KL(pi || pi_ref) estimate on tokens sampled from pi: exp(r) - r - 1, r = ref - logp (>= 0)."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1


def inner_loss(
    logp: Tensor, ref_logp: Tensor, mask: Tensor, selection: Tensor, beta: float, num_prompts: int
) -> tuple[Tensor, Tensor, Tensor]:
    """L_in = sum_ij a_ij [nll_ij + beta KL_ij] / B, nll and KL averaged over response tokens.

    Returns (loss, per-sample nll (S,), per-sample KL (S,)). Dividing by B (not by sum a) keeps
    dL/da_ij = loss_ij / B, which the meta step relies on.
    """
    nll = masked_mean(-logp, mask)
    kl = masked_mean(kl_k3(logp, ref_logp), mask)
    loss = (selection * (nll + beta * kl)).sum() / num_prompts
    return loss, nll, kl


def outer_loss(logp: Tensor, mask: Tensor) -> Tensor:
    """L_out = mean negative log-likelihood of the meta batch's non-dominated responses (per-token mean)."""
    return masked_mean(-logp, mask).mean()


def pwn_meta_loss(selection: Tensor, meta_grad: Tensor) -> Tensor:
    """Surrogate whose gradient w.r.t. the PWN equals dL_out/dphi = sum_ij dL_out/da_ij * da_ij/dphi."""
    return (selection * meta_grad.detach()).sum()


def preference_regression(pwn_weights: Tensor, target_weights: Tensor) -> Tensor:
    """KL(target || pwn) averaged over prompts: pulls the PWN onto the optimised preference parameters."""
    target = target_weights.detach().clamp(min=1e-8)
    return (target * (target.log() - pwn_weights.clamp(min=1e-8).log())).sum(-1).mean()


def shortfall(rewards: Tensor, valid: Tensor, weights: Tensor) -> Tensor:
    """Where each prompt's responses fall short of other prompts' at the same requested preference. (P,K).

    rewards (P,N,K) normalised, valid (P,N), weights (P,K) the preferences the samples were drawn under. A
    prompt's mean reward per objective is compared with a least-squares fit of every prompt's mean reward on
    its preference (intercept + the simplex's K-1 free coordinates), so that asking for little of objective k
    is not counted as falling short on k. The residuals are replaced by their centred ranks per objective, in
    [-1, 1]: symmetric whatever the rewards' skew (a harmlessness score near 1 with rare drops would otherwise
    leave most prompts slightly above the fit and push every prompt alike). Negative e_ik: prompt i is weak on
    objective k for what was asked. Prompts without a valid sample, and every prompt when fewer than K+1 have
    one (no fit), get 0.
    """
    v = valid.to(rewards.dtype)
    means = (rewards.nan_to_num(0.0) * v[..., None]).sum(1) / v.sum(1, keepdim=True).clamp(min=1)
    out = torch.zeros_like(means)
    has = valid.any(1)
    if int(has.sum()) <= weights.shape[-1]:
        return out
    w, y = weights[has].to(means.dtype), means[has]
    design = torch.cat([torch.ones_like(w[:, :1]), w[:, :-1]], -1)
    residual = y - design @ torch.linalg.lstsq(design, y).solution
    ranks = residual.argsort(0).argsort(0).to(means.dtype)
    out[has] = 2 * ranks / (len(ranks) - 1) - 1
    return out


def grid_assignment(num_prompts: int, grid: Tensor, offset: int = 0) -> Tensor:
    """Preference of each held-out meta prompt: the evaluation grid cycled over the prompts. (P,K).

    Prompt i gets grid[(offset + i) % G]: with P >= G every grid preference is used in one meta batch; with
    P < G, passing the step count as `offset` rotates the grid so that every preference is used over steps.
    """
    if num_prompts < 1:
        raise ValueError(f"the meta batch needs at least one prompt, got num_prompts={num_prompts}")
    if grid.dim() != 2 or len(grid) == 0:
        raise ValueError(f"grid must be a non-empty (G,K) tensor of preferences, got shape {tuple(grid.shape)}")
    index = (torch.arange(num_prompts) + offset) % len(grid)
    return grid[index.to(grid.device)]


def front_advantages(rewards: Tensor, weights: Tensor, scalarization: str = "linear") -> Tensor:
    """A_mj = s(w_m, R_mj) - mean_j s(w_m, R_mj), per prompt and preference, s = `scalarize`; detached. (M,J,K),(M,K) -> (M,J).

    Samples with a non-finite reward (dropped by the reward backends) get advantage 0 and are left out of
    their group's mean; a group with fewer than two valid samples has all-zero advantages.
    """
    scores = scalarize(weights, rewards, scalarization).detach()  # (M,J)
    scores = scores.masked_fill(~torch.isfinite(rewards).all(-1), float("nan"))  # tchebycheff scores them 0
    valid = torch.isfinite(scores)
    count = valid.sum(-1, keepdim=True)
    mean = scores.nan_to_num(0.0, posinf=0.0, neginf=0.0).masked_fill(~valid, 0.0).sum(-1, keepdim=True)
    mean = mean / count.clamp(min=1)
    advantages = (scores - mean).masked_fill(~valid, 0.0)
    return advantages.masked_fill(count < 2, 0.0)


def front_outer_loss(logp: Tensor, resp_mask: Tensor, rewards: Tensor, weights: Tensor, scalarization: str = "linear"
                     ) -> Tensor:
    """The `front` outer objective (METHOD.md step 7 v2): policy-gradient surrogate of the grid's scalarised reward.

    L_out = -(1/(M*J)) sum_m sum_j A_mj log pi(y_mj | x_m, w_m), log pi(y) = sum of the response's token
    log-probs (resp_mask). The 1/J keeps the scale (and the meta learning rate) independent of the number of
    samples per prompt; its gradient is -E[A grad log pi], the REINFORCE estimate of -grad J(theta) with a
    per-group mean baseline. Advantages are constants (no gradient flows into the rewards or weights).
    Shapes: logp, resp_mask (M*J,T), rows ordered prompt-major (row m*J + j is y_mj); rewards (M,J,K);
    weights (M,K). Returns a 0-d tensor.
    """
    M, J, _ = rewards.shape
    if logp.shape[0] != M * J or resp_mask.shape != logp.shape or weights.shape[0] != M:
        raise ValueError(
            f"front_outer_loss: logp {tuple(logp.shape)} and resp_mask {tuple(resp_mask.shape)} must be (M*J,T) "
            f"for rewards (M,J,K)={tuple(rewards.shape)} and weights (M,K)={tuple(weights.shape)}"
        )
    seq_logp = (logp * resp_mask.to(logp.dtype)).sum(-1).view(M, J)  # log pi(y_mj)
    advantages = front_advantages(rewards, weights, scalarization).to(seq_logp.dtype)
    return -(advantages * seq_logp).sum() / (M * J)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float) -> Tensor:
    """DPO's sigmoid loss (Rafailov et al. 2023; TRL's loss_type="sigmoid") on summed response log-probabilities, (S,) each:
    mean of -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def dpo_sft_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float,
                 chosen_tokens: Tensor, sft_weight: float) -> Tensor:
    """DPO's loss plus `sft_weight` times the chosen answers' per-token NLL (TRL's `rpo_alpha`, Pang et al. 2024): DPO
    alone can lower the chosen answers' likelihood along with the rejected ones', moving the policy off natural text."""
    loss = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    if sft_weight:
        loss = loss + sft_weight * (-policy_chosen / chosen_tokens.clamp(min=1)).mean()
    return loss


def preference_pairs(rewards: Tensor, preferences: Tensor) -> list[tuple[int, int, int, int]]:
    """(prompt, chosen, rejected, g) for each prompt's answers (P,A,K) and each preference w_g (G,K): under w_g's
    linear score w_g . r, the answer that scores most over the one that scores least. Ties and answers with a
    non-finite reward give no pair. Between the corners the rewards must share a scale (normalised): a conflict
    (one answer more helpful, the other more harmless) is ranked one way on one side of the w where the two scores
    cross and the other way on the other, so interior preferences say where along the simplex the ranking turns.
    With two answers the Tchebycheff score ranks them as the linear one does."""
    pairs = []
    for p in range(rewards.shape[0]):
        usable = torch.isfinite(rewards[p]).all(-1).nonzero().flatten()
        if len(usable) < 2:
            continue
        for g, w in enumerate(preferences.to(rewards.dtype)):
            scores = rewards[p, usable] @ w
            best, worst = int(usable[scores.argmax()]), int(usable[scores.argmin()])
            if scores.max() > scores.min():
                pairs.append((p, best, worst, g))
    return pairs

