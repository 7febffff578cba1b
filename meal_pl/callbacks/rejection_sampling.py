"""Rollout callbacks: at the start of each training batch, produce the Rollout the module's step consumes.

`RolloutCallback` is the contract (subclass it and override `rollout` to change how samples are drawn,
scored or selected: hard best-of-N, another filter, another generator); `RejectionSampling` is Meal's
(METHOD.md steps 1-5): propose -> condition -> generate N -> score K rewards -> normalise -> select -> relabel.
"""

from __future__ import annotations

import time

import lightning as L
import torch

from meal_pl import distributed, losses
from meal_pl.pareto import simplex_grid
from meal_pl.precision import forward_context
from meal_pl.profiling import section
from meal_pl.pwn import propose
from meal_pl.rollout import FrontBatch, Rollout
from meal_pl.sampling import encode_prompts, response_mask
from meal_pl.sequences import sequence_logprobs


class RolloutCallback(L.Callback):
    """Hands the module one Rollout per training batch, before its training_step runs."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # A resumed run's RNG streams are restored here, right before the first resumed rollout draws from them.
        pl_module.restore_rng_states()
        # Lightning's precision context covers training_step only; the rollout's passes run under it too.
        with forward_context(pl_module):
            pl_module.rollout = self.rollout(pl_module, list(batch))

    def rollout(self, module: L.LightningModule, prompts: list[str]) -> Rollout:
        raise NotImplementedError


def require_rollout_callback(callbacks: list) -> None:
    """A run without a rollout callback cannot take a step: say so at start, naming the config key."""
    if not any(isinstance(cb, RolloutCallback) for cb in callbacks):
        raise ValueError(
            "no rollout callback: callbacks.rejection_sampling is missing (conf/callbacks/default.yaml: _target_: "
            "meal_pl.callbacks.rejection_sampling.RejectionSampling) and no other RolloutCallback subclass is given"
        )


def trained_rows_logprobs(model, prefix: torch.Tensor, prefix_mask: torch.Tensor, responses: torch.Tensor,
                          rows: torch.Tensor, conditioner=None) -> torch.Tensor:
    """(S,T) log-probs of the response tokens on `rows` (S,), 0 elsewhere: a rejected sample (keep = False) has
    a_ij = 0 whatever w is, so no loss, lookahead or metric reads its reference log-probs; the pass skips it."""
    if rows.all():
        return sequence_logprobs(model, prefix, prefix_mask, responses, conditioner=conditioner)
    idx = rows.nonzero().squeeze(1)
    out = torch.zeros(responses.shape, dtype=torch.float32, device=responses.device)
    if len(idx):
        logp = sequence_logprobs(model, prefix[idx], prefix_mask[idx], responses[idx], conditioner=conditioner)
        out = out.to(logp.dtype).index_copy(0, idx, logp)
    return out


def source_inputs(module: L.LightningModule, prompts: list[str], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,F) what the preference source reads: a learnable PWN the prompt features h(x) (a pass of pi_ref);
    a per-group source (`pwn=group`) the prompts' group codes; the other static sources nothing."""
    pwn = module.pwn
    if getattr(pwn, "learnable", False):
        return module.prompt_features(ids, mask)
    if hasattr(pwn, "codes"):
        groups = getattr(getattr(module.trainer, "datamodule", None), "groups", {})
        return pwn.codes([groups.get(p) for p in prompts]).to(module.device)
    return ids.new_zeros(len(prompts), 1).float()


class RejectionSampling(RolloutCallback):
    """Meal's rollout. Sampling and selection settings are the algorithm's (`algorithm.sampler.*`)."""

    def rollout(self, module: L.LightningModule, prompts: list[str]) -> Rollout:
        sampler, tok = module.sampler, module.tokenizer
        B, N = len(prompts), sampler.num_samples
        ids, mask, truncated = encode_prompts(tok, prompts, module.max_prompt_length, module.device)
        if truncated and module.prompt_overflow == "error":  # on_fit_start checked the data; this guards other sources
            raise ValueError(f"{truncated} prompts of the batch exceed algorithm.max_prompt_length={module.max_prompt_length}")
        # 1-2. propose preferences and condition the prompts; static sources read no features (no reference pass)
        with section("propose"):
            features = source_inputs(module, prompts, ids, mask)
            with torch.no_grad():
                weights, explore = propose(module.pwn, features, module.meta.exploration)
            cond = module.tag_weights(weights)
            prefix, prefix_mask = module.conditioner.condition(ids, mask, cond)
        # 3. sample and score
        with section("generate"):
            start = time.perf_counter()
            responses = module.generate(prefix, prefix_mask)  # (B*N, T)
            gen_time = time.perf_counter() - start
        with section("score"):
            resp_mask = response_mask(responses, module.end_ids)
            texts = tok.batch_decode(responses, skip_special_tokens=True)
            raw, rewards, valid = self.score(module, [p for p in prompts for _ in range(N)], texts, B, N)
        # 4-5. rejection sampling and relabelling
        with section("select"):
            keep, selection = sampler.select(weights, rewards, valid)
            tags = losses.relabel(rewards, sampler.relabel_tau) if sampler.relabel else cond[:, None].expand_as(rewards)
            S, K = B * N, rewards.shape[-1]
            seq_prefix, seq_mask = module.conditioner.condition(ids.repeat_interleave(N, 0), mask.repeat_interleave(N, 0),
                                                                tags.reshape(S, K))
        with section("reference"), torch.no_grad(), module.reference() as ref:
            ref_logp = trained_rows_logprobs(ref, seq_prefix, seq_mask, responses, keep.flatten(), module.conditioner)
        with section("meta"):  # the front objective's held-out samples are the meta step's cost
            front = self.front_batch(module, prompts) if module.meta.outer == "front" and module.meta_due() else None
        return Rollout(
            front=front, prompts=prompts, features=features, weights=weights, explore=explore, responses=responses,
            resp_mask=resp_mask, raw=raw, rewards=rewards, valid=valid, keep=keep, selection=selection,
            prefix=seq_prefix, prefix_mask=seq_mask, ref_logp=ref_logp,
            non_dominated=valid & ~losses.dominated(rewards, valid), gen_time=gen_time,
            counts={"truncated_prompts": truncated, "invalid_rewards": (~valid).sum()},  # read with the step's metrics
        )

    def front_batch(self, module: L.LightningModule, batch_prompts: list[str]) -> FrontBatch:
        """Held-out samples for outer=front: M training prompts, one evaluation-grid preference each (rotating
        over steps), J responses each drawn at theta, scored and normalised (the statistics are not updated).
        Held out from the inner loss: drawn from the whole training pool, not this batch (its fallback)."""
        cfg, K = module.meta, len(module.objective_names)
        grid = simplex_grid(K, module.grid_points).to(module.device)
        M, J = cfg.front_prompts or len(grid), cfg.front_samples
        datamodule = getattr(module.trainer, "datamodule", None)
        pool = list(getattr(datamodule, "train_prompts", None) or batch_prompts)
        prompts = [pool[i] for i in torch.randint(len(pool), (M,)).tolist()]
        weights = losses.grid_assignment(M, grid, offset=module.global_step * M)
        ids, mask, _ = encode_prompts(module.tokenizer, prompts, module.max_prompt_length, module.device)
        prefix, prefix_mask = module.conditioner.condition(ids, mask, module.tag_weights(weights))
        responses = module.generate(prefix, prefix_mask, num_samples=J)  # (M*J,T), prompt-major
        texts = module.tokenizer.batch_decode(responses, skip_special_tokens=True)
        raw = module.rewards([p for p in prompts for _ in range(J)], texts).to(module.device)
        rewards = module.reward_norm.normalize(raw).view(M, J, K)
        return FrontBatch(prefix.repeat_interleave(J, 0), prefix_mask.repeat_interleave(J, 0), responses,
                          response_mask(responses, module.end_ids), rewards, weights,
                          module.sampler.scalarization)

    @staticmethod
    def score(module: L.LightningModule, prompts: list[str], texts: list[str], B: int, N: int):
        """Raw (S,K) rewards, running-normalised (B,N,K) rewards and the (B,N) validity mask."""
        raw = module.rewards(prompts, texts).to(module.device)
        valid = torch.isfinite(raw).all(-1)
        if not valid.any():
            raise RuntimeError(
                f"every reward in the batch is NaN/inf (objectives {module.objective_names}); check the reward "
                "backends in objective.rewards"
            )
        # Every rank folds in every rank's rewards, so the normalisation is the same everywhere.
        module.reward_norm.update(distributed.all_gather_rows(raw))
        rewards = module.reward_norm.normalize(raw).nan_to_num(0.0).view(B, N, -1)
        return raw, rewards, valid.view(B, N)
