"""MealModule: the bi-level loop of METHOD.md under Lightning manual optimisation.

One training step, in the order of METHOD.md step 9: a rollout callback (callbacks.rejection_sampling)
proposes, generates, scores and selects at the start of the batch and hands over a `Rollout`; the module
then takes the meta step on the PWN (phi), the base step on the policy (theta), and logs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from meal_pl import distributed, losses, meta
from meal_pl.callbacks.rejection_sampling import require_rollout_callback
from meal_pl.checkpoint import (
    check_compatible,
    check_steps_left,
    meal_state,
    restore_meal_state,
    set_rng_states,
    tokenizer_fingerprint,
)
from meal_pl.conditioning import TextTagConditioner
from meal_pl.conditioning.base import preference_parameters
from meal_pl.evaluation import FrontEvaluation
from meal_pl.inference import contiguous_head_input, token_rows_written_in
from meal_pl.limits import check_context, check_prompt_lengths
from meal_pl.meta import MetaConfig
from meal_pl.models import apply_lora, is_peft
from meal_pl.pareto import ideal_hypervolume
from meal_pl.precision import forward_context
from meal_pl.profiling import section
from meal_pl.ranges import check_integer, check_number
from meal_pl.rewards import RewardSet, RunningRewardNorm
from meal_pl.rollout import Rollout, gather
from meal_pl.sampling import RejectionSampler, end_token_ids, generate_eval_mode, position_ids
from meal_pl.sequences import conditioned, sequence_logprobs
from meal_pl.sft import dpo_preferences
from meal_pl.step_metrics import publish, step_metrics
from meal_pl.warm_start import WarmStart

_log = logging.getLogger("meal_pl")

__all__ = ["MealModule", "MetaConfig"]
PROMPT_OVERFLOW = ("truncate", "error")

# pi_ref is frozen in eval mode on purpose; Lightning's generic warning about eval-mode modules is noise here.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
# Checkpoints are taken after a step's updates with global_step already counting it: the state we want.
warnings.filterwarnings("ignore", message=r".*no pre-optimization state was saved.*")


def _mixed_precision(module: L.LightningModule) -> bool:
    """True when the trainer runs a mixed-precision plugin (bf16-mixed, 16-mixed)."""
    trainer = module._trainer
    return trainer is not None and str(trainer.precision).endswith("-mixed")


class MealModule(FrontEvaluation, L.LightningModule):
    """Bi-level Meta-Aligner: a preference-weight-net over a preference-conditioned LLM policy."""

    def __init__(
        self, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rewards: RewardSet, objective: dict[str, Any],
        pwn: Callable[..., torch.nn.Module], sampler: RejectionSampler, meta: MetaConfig,
        policy_optimizer: Callable[..., torch.optim.Optimizer], pwn_optimizer: Callable[..., torch.optim.Optimizer],
        beta: float = 0.05, warmup_steps: int = 10, gradient_clip_val: float = 1.0, max_prompt_length: int = 96,
        prompt_overflow: str = "truncate", conditioner: Callable[..., TextTagConditioner] | None = None,
        warm_start: WarmStart | None = None, eval_batch_size: int = 128,
        eval_greedy: bool = False, eval_seed: int = 1234, histogram_every_n_steps: int = 10,
        accumulate_grad_batches: int = 1, lora: dict[str, Any] | None = None, neutral_tags: bool = False,
        tag_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.policy, self.tokenizer, self.rewards = policy, tokenizer, rewards
        self.objective_names = list(rewards.names)
        check_context(policy, max_prompt_length, len(self.objective_names), sampler.max_new_tokens)
        if prompt_overflow not in PROMPT_OVERFLOW:
            raise ValueError(f"algorithm.prompt_overflow={prompt_overflow!r}; choose one of {PROMPT_OVERFLOW}")
        check_number("algorithm.beta", beta, note=" (the KL weight; 0: no KL term)")
        check_number("algorithm.gradient_clip_val", gradient_clip_val, strict=True, note=" (the norm gradients are clipped to)")
        for key, value, least in (("warmup_steps", warmup_steps, 0),
                                  ("eval_batch_size", eval_batch_size, 1), ("histogram_every_n_steps", histogram_every_n_steps, 1)):
            check_integer(f"algorithm.{key}", value, least)
        if warm_start is not None:  # its check, here: before minutes of sampling
            dpo_preferences(len(self.objective_names), warm_start.dpo_points)
        self.warm_start = warm_start  # the stage on_fit_start runs (meal_pl/warm_start.py): its own settings and directory
        check_integer("algorithm.accumulate_grad_batches", accumulate_grad_batches, 1)
        self.reference_point = [float(v) for v in objective["reference_point"]]
        if len(self.reference_point) != len(self.objective_names):
            raise ValueError(f"objective.reference_point={self.reference_point} has {len(self.reference_point)} values but the "
                             f"objective has {len(self.objective_names)} ({self.objective_names}); give one per objective")
        self.grid_points = objective.get("grid_points", 11)
        check_integer("objective.grid_points", self.grid_points, len(self.objective_names), " (the simplex's corners)")
        simplex = objective.get("front") == "simplex"
        self.max_hypervolume = ideal_hypervolume(len(self.objective_names), self.grid_points, self.reference_point) if simplex else None
        # How w reaches the policy (conditioning=tags|tied_tags|embedding|svd_lora|text); its modules live in the policy.
        self.conditioner = (conditioner or TextTagConditioner)(names=self.objective_names)
        self.conditioner.attach(tokenizer, policy)
        self.end_ids = end_token_ids(tokenizer, policy)  # every token that ends an answer (a chat model has several)
        # pi_ref: the frozen initial policy (re-synced after the warm start); its hidden states feed the PWN.
        # With LoRA it is the same weights with the adapters disabled, so the model is held once.
        if lora:
            check_integer("model.lora.r", lora.get("r", 0), 0, " (0: full fine-tuning)")
        if lora and lora.get("r", 0) > 0:
            self.policy = apply_lora(policy, self.conditioner.token_ids.flatten().tolist(), **lora)
            self.conditioner.unfreeze(self.policy)  # peft froze the backend's own parameters with the base
            self.ref = None
        else:
            self.ref = copy.deepcopy(policy).requires_grad_(False).eval()
        self.tag_lr_scale = checked_tag_lr_scale(tag_lr_scale, self.policy)
        for model in (self.policy, self.ref):  # bf16 passes with logits_to_keep: no copy of the head's weight per row
            if model is not None:
                contiguous_head_input(model)
        self.pwn = pwn(feature_dim=policy.config.hidden_size, num_objectives=len(self.objective_names))
        # The PWN is replicated and averaged by meal_pl.distributed, never by DDP's reducer.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, [f"pwn.{n}" for n, _ in self.pwn.named_parameters()])
        self.pwn_opt: torch.optim.Optimizer | None = None
        self._pwn_opt_state: dict | None = None
        self.reward_norm = RunningRewardNorm(len(self.objective_names))
        self.sampler, self.meta = sampler, meta
        for key, partial in (("policy_optimizer", policy_optimizer), ("pwn_optimizer", pwn_optimizer)):
            lr = getattr(partial, "keywords", {}).get("lr")  # a functools.partial from the config (_partial_: true)
            if lr is not None:
                check_number(f"algorithm.{key}.lr", lr, strict=True, note=", e.g. 2e-3")
        self.policy_optimizer, self.pwn_optimizer = policy_optimizer, pwn_optimizer
        self.beta, self.warmup_steps, self.gradient_clip_val = beta, warmup_steps, gradient_clip_val
        self.max_prompt_length, self.prompt_overflow, self.eval_batch_size = max_prompt_length, prompt_overflow, eval_batch_size
        self.eval_greedy, self.eval_seed = eval_greedy, eval_seed
        self.histogram_every_n_steps, self.accumulate_grad_batches = histogram_every_n_steps, accumulate_grad_batches
        # Unconditioned baselines (linear, soups): every prompt carries the uniform tag in training and
        # evaluation, so preferences act through selection only and a front must come from separate policies.
        self.neutral_tags = neutral_tags
        self.meta_buffer: deque[tuple[list[int], list[int]]] = deque(maxlen=meta.buffer_size)
        self.alt_buffer: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self.rollout: Rollout | None = None  # set by the rollout callback at the start of each batch
        self.pending: list[Rollout] = []  # rollouts gathered for the next meta step (algorithm.meta.every_n_steps)
        self.restored = False
        self.rng_to_restore: dict[str, Any] | None = None
        self._identity: dict[str, Any] | None = None
        self.counters = {"invalid_rewards": 0, "truncated_prompts": 0, "empty_responses": 0, "identical_groups": 0}

    # ----- set-up, checkpoints ------------------------------------------------------------------
    def train(self, mode: bool = True) -> MealModule:
        """Switch modes, but pi_ref always stays in eval mode (no dropout in the reference)."""
        super().train(mode)
        if self.ref is not None:
            self.ref.eval()
        return self

    def configure_optimizers(self):
        """Lightning gets the policy's optimiser only (every strategy supports one; global_step counts policy
        updates); the PWN's is the module's own, averaged by meal_pl.distributed and saved in meal_state."""
        params = policy_param_groups(self.policy, self.tag_lr_scale)
        policy_opt = self.policy_optimizer(params=params)
        if getattr(policy_opt, "defaults", {}).get("fused") and _mixed_precision(self):
            # Lightning's mixed-precision plugin refuses to clip a fused optimiser's gradients; the unfused
            # optimiser computes the same update.
            policy_opt = self.policy_optimizer(params=params, fused=False)
        if len(policy_opt.param_groups) == 2:  # the preference's own parameters (before the schedule reads the lr)
            policy_opt.param_groups[1]["lr"] *= self.tag_lr_scale
        warmup = max(1, self.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(policy_opt, lambda s: min(1.0, (s + 1) / warmup))
        pwn_params = [p for p in self.pwn.parameters() if p.requires_grad]
        self.pwn_opt = self.pwn_optimizer(params=pwn_params) if pwn_params else None
        if self.pwn_opt is not None and self._pwn_opt_state is not None:
            self.pwn_opt.load_state_dict(self._pwn_opt_state)
        return [policy_opt], [{"scheduler": schedule, "interval": "step"}]

    def setup(self, stage: str) -> None:
        """Strategy-specific checks and settings, before Lightning wraps the module; the reward models that follow the
        policy (device: auto) go to this rank's device before anything is scored."""
        self.rewards.place(self.trainer.strategy.root_device)
        distributed.prepare_strategy(self.trainer.strategy, self.meta.lookahead, self.accumulate_grad_batches,
                                     [self.pwn, self.reward_norm])

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to be resumed (tensor shapes are checked separately)."""
        if self._identity is None:  # hashing a 150k-token vocabulary takes a moment: once per run
            self._identity = {"objective_names": list(self.objective_names), "tokenizer": tokenizer_fingerprint(self.tokenizer)}
        return self._identity

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before Lightning loads the state_dict: refuse a mismatched checkpoint with a one-line reason.
        trainer = self._trainer
        path = getattr(trainer, "ckpt_path", None)
        check_compatible(checkpoint, self, self.identity(), path, getattr(trainer, "strategy", None))
        check_steps_left(checkpoint, getattr(trainer, "max_steps", None), path)
        self.restored = True
        restore_meal_state(self, checkpoint.get("meal_state", {}))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["meal_state"] = meal_state(self)

    def restore_rng_states(self) -> None:
        """A resumed checkpoint's RNG states, restored as late as possible: by the rollout callback, right before
        the first resumed step draws. Lightning restores no global RNG, and everything between its restore and
        then (the callbacks' on_train_start, building the data iterator) would otherwise move the streams."""
        if self.rng_to_restore is not None:
            set_rng_states(self.rng_to_restore)
            self.rng_to_restore = None

    def on_train_start(self) -> None:
        """Under DDP each rank draws its own exploration and samples: offset the seed by the rank (ranks start
        from the same seed, i.e. the same warm start and weights, and would otherwise draw alike)."""
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + self.global_rank)
            distributed.broadcast_(list(self.pwn.parameters()))

    def on_fit_start(self) -> None:
        """Check for a rollout callback and the prompt lengths; then the warm start (never on resume)."""
        require_rollout_callback(self.trainer.callbacks)
        datamodule = self.trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "eval_prompts"):
            prompts = list(getattr(datamodule, "train_prompts", [])) + datamodule.eval_prompts()
            context = getattr(self.policy.config, "max_position_embeddings", None)
            check_prompt_lengths(self.tokenizer, prompts, self.max_prompt_length, self.prompt_overflow, context)
        if self.restored or self.warm_start is None:
            return
        # The warm start is its own stage, kept and reused across runs; it runs here, after the precision plugin has
        # set the weights' dtypes, so that it trains as the run would.
        info = self.warm_start.prepare(self, datamodule)
        if info and self.logger is not None:
            loss, held = info.get("loss", {}), info.get("heldout", {})
            figures = {f"warm_start/{k}_loss": loss[k] for k in ("first", "last", "first_tenth", "last_tenth") if k in loss}
            figures |= {f"warm_start/heldout_{k}": v for k, v in held.items() if isinstance(v, (int, float)) and v is not None}
            self.logger.log_metrics(figures | {"warm_start/reused": float(info.get("reused", False))}, step=0)

    # ----- the training step (METHOD.md step 9: rollout -> meta step -> base step -> log) ------------
    def training_step(self, batch: list[str], batch_idx: int) -> None:
        rollout, self.rollout = self.rollout, None
        if rollout is None:
            raise RuntimeError("no rollout for this batch: a RolloutCallback (callbacks.rejection_sampling) must run first")
        with section("meta"):
            meta_logs = self.meta_step(rollout)
        loss, kl = self.base_step(rollout, batch_idx)
        self.log_step(rollout, loss, kl, meta_logs)

    def meta_step(self, r: Rollout) -> dict[str, float]:
        """Steps 7-8 on the PWN, before the base step; the meta buffer takes the batch's non-dominated samples."""
        logs: dict[str, float] = {}
        learn_pwn = getattr(self.pwn, "learnable", False) and not self.meta.frozen
        # Only the lookaheads' v1 target reads the buffer of past non-dominated samples: skip the copy otherwise.
        reads_buffer = learn_pwn and self.meta.lookahead != "alternating" and self.meta.outer == "nondominated_nll"
        new_rows = meta.buffer_rows(r.prefix, r.prefix_mask, r.responses, r.resp_mask, r.non_dominated) if reads_buffer else []
        if learn_pwn and self.meta.lookahead == "alternating":
            self.alt_buffer.append((r.features.cpu(), r.weights.cpu(), r.rewards.cpu(), r.valid.cpu(), r.non_dominated.cpu()))
            if len(self.alt_buffer) >= self.meta.alternating_every:
                features, surrogate, direct = meta.alternating_batch(self.alt_buffer, self.device, self.pwn, self.sampler.tau,
                                                                     self.meta.outer, self.sampler.scalarization)
                self.alt_buffer = []
                logs = meta.pwn_step(self.pwn, self.pwn_opt, features, surrogate, self.meta, self.gradient_clip_val, direct)
        elif learn_pwn:
            self.pending.append(r)
            if len(self.pending) >= self.meta.every_n_steps:
                logs = self.lookahead_step(self.gathered(len(r.prompts)), new_rows)
        self.meta_buffer.extend(new_rows)
        return logs

    def meta_due(self) -> bool:
        """Whether this batch's meta step runs (a lookahead mode, every algorithm.meta.every_n_steps batches)."""
        learn_pwn = getattr(self.pwn, "learnable", False) and not self.meta.frozen
        return learn_pwn and self.meta.lookahead != "alternating" and len(self.pending) + 1 >= self.meta.every_n_steps

    def gathered(self, batch_size: int) -> Rollout:
        """The rollouts since the last meta step as one, at most algorithm.meta.max_prompts (0: a batch) prompts."""
        pending, self.pending = self.pending, []
        return gather(pending, self.tokenizer.pad_token_id, self.meta.max_prompts or batch_size)

    def lookahead_step(self, r: Rollout, new_rows: list) -> dict[str, float]:
        """Steps 7-8 with a lookahead: the meta gradient of the chosen outer objective, then the PWN step."""
        rows = ~r.explore
        meta_rows = list(self.meta_buffer)[-self.meta.meta_batch_size:] or new_rows[: self.meta.meta_batch_size]
        outer = meta.outer_objective(self.meta.outer, self.policy, r.front, meta_rows, self.tokenizer.pad_token_id, self.conditioner)
        ready = bool(rows.any()) and bool((r.selection[rows] > 0).sum() > rows.sum()) and outer is not None
        # Some prompt has a choice to make - on every rank, as the meta step all-reduces.
        if not distributed.all_ranks(ready, self.device):
            return {}
        # A prompt with one selected sample has a_ij = 1 whatever w is: its meta gradient is never used.
        has_choice = (r.selection > 0).sum(-1) > 1
        meta_grad, l_out = meta.meta_gradient(self.policy, r.inner(), outer, r.selection, self.meta.lookahead,
                                              self.meta.inner_lr, self.beta, rows & has_choice, self.conditioner)
        surrogate = meta.selection_surrogate(self.pwn, r.weights[rows], r.rewards[rows], r.keep[rows], meta_grad[rows],
                                             self.sampler.tau, self.sampler.scalarization)
        logs = {"meta/outer_loss": float(l_out)}
        return logs | meta.pwn_step(self.pwn, self.pwn_opt, r.features[rows], surrogate, self.meta, self.gradient_clip_val)

    def base_step(self, r: Rollout, batch_idx: int) -> tuple[Tensor, Tensor]:
        """Step 6 on the policy. With accumulate_grad_batches=k, one update per k batches of 1/k-scaled losses;
        DDP all-reduces every micro-batch's gradient (a sum of averages is the average of the sum)."""
        policy_opt = self.optimizers()
        if batch_idx % self.accumulate_grad_batches == 0:
            with section("optimiser"):
                policy_opt.zero_grad()
        with section("base"):
            loss, kl = self.policy_loss(r)
            self.manual_backward(loss / self.accumulate_grad_batches)
        if (batch_idx + 1) % self.accumulate_grad_batches == 0:
            with section("optimiser"):
                self.clip_gradients(policy_opt, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
                policy_opt.step()
                self.lr_schedulers().step()
        return loss, kl

    def policy_loss(self, r: Rollout) -> tuple[Tensor, Tensor]:
        """L_in of the rollout (step 6) and each sample's KL (S,), 0 where a_ij = 0. Only samples with a_ij > 0
        enter L_in, so the policy's forward (and backward) skips the rest: rejected samples cost no pass."""
        a = r.selection.flatten()
        idx = (a > 0).nonzero().squeeze(1)
        logp = sequence_logprobs(self.policy, r.prefix[idx], r.prefix_mask[idx], r.responses[idx], conditioner=self.conditioner)
        loss, _, kl = losses.inner_loss(logp, r.ref_logp[idx], r.resp_mask[idx], a[idx], self.beta, len(r.prompts))
        return loss, kl.new_zeros(a.shape).index_copy(0, idx, kl.detach())

    def log_step(self, r: Rollout, loss: Tensor, kl: Tensor, meta_logs: dict[str, float]) -> None:
        """Everything TensorBoard shows per step, logged in one place.

        The step's metrics reach the host as plain floats in one transfer (step_metrics), go into
        trainer.callback_metrics (what StepTimer, the benchmark, monitors and sweepers read) every step, and to
        the loggers in one `log_metrics` call every trainer.log_every_n_steps; Lightning's `self.log` (per-key
        bookkeeping and reductions, ~20 keys a step) carries only the progress bar's `loss` and `reward`.
        """
        with section("logging"):
            metrics, counts = step_metrics(r, self.objective_names, loss, kl, self.optimizers().param_groups[0]["lr"])
            for key, value in counts.items():
                self.counters[key] += value
            metrics |= {f"count/{k}": float(v) for k, v in self.counters.items()} | meta_logs
            self.log("loss", metrics["train/policy_loss"], prog_bar=True, logger=False, batch_size=len(r.prompts))
            self.log("reward", metrics["reward/scalarized"], prog_bar=True, logger=False, batch_size=len(r.prompts))
            publish(self.trainer, metrics, r.weights, self.objective_names, self.histogram_every_n_steps)

    # ----- the policy and the PWN, as the rollout and the evaluation use them -----------------------
    @contextlib.contextmanager
    def reference(self) -> Iterator[PreTrainedModel]:
        """pi_ref as a causal LM: the frozen copy, or (LoRA) the policy with its adapters disabled."""
        if self.ref is not None:
            yield self.ref
            return
        was_training = self.policy.training
        self.policy.eval()  # the frozen copy is always in eval mode; keep LoRA's reference the same
        try:
            with self.policy.disable_adapter(), self.conditioner.reference(self.policy):
                yield self.policy
        finally:
            self.policy.train(was_training)

    @torch.no_grad()
    def prompt_features(self, ids: Tensor, mask: Tensor) -> Tensor:
        """h(x): mean-pooled last hidden states of the frozen reference policy over prompt tokens. (B,F)."""
        with self.reference() as ref, forward_context(self):
            backbone = (ref.get_base_model() if is_peft(ref) else ref).base_model
            hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).last_hidden_state
        m = mask[..., None].float()
        return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)  # float32 under bf16 too: the PWN reads it

    def tag_weights(self, weights: Tensor) -> Tensor:
        """The preference written into the prompt: the requested one, or uniform 1/K with neutral_tags."""
        return torch.full_like(weights, 1.0 / weights.shape[-1]) if self.neutral_tags else weights

    def generate(self, prefix: Tensor, prefix_mask: Tensor, greedy: bool = False, num_samples: int | None = None) -> Tensor:
        """Sample from the policy in eval mode (no dropout), with tag and padding tokens suppressed."""
        # Sharded weights (FSDP, ZeRO-3): every rank decodes to max_new_tokens in lockstep (each forward all-gathers).
        trainer = self._trainer
        synced = trainer is not None and trainer.world_size > 1 and distributed.shards_parameters(trainer.strategy)
        suppress = self.conditioner.token_ids.flatten().tolist()
        # The tag rows written into the embedding once, not rebuilt per token (sharded weights: left to peft).
        rows = contextlib.nullcontext() if synced else token_rows_written_in(self.policy)
        with conditioned(self.conditioner, self.policy, prefix), forward_context(self), rows:
            return generate_eval_mode(self.sampler, self.policy, self.tokenizer, prefix, prefix_mask, suppress, greedy, num_samples,
                                      synced, self.end_ids)


def checked_tag_lr_scale(scale: float, policy: torch.nn.Module) -> float:
    """algorithm.tag_lr_scale, refused where it is not a positive number or the policy has nothing it scales."""
    check_number("algorithm.tag_lr_scale", scale, strict=True, note=" (1 = the policy's learning rate)")
    if scale != 1 and not preference_parameters(policy):
        raise ValueError(f"algorithm.tag_lr_scale={scale} scales the preference's own parameters, and this policy has "
                         "none (its tag rows train inside the whole embedding): use LoRA (model.lora.r=8) or "
                         "conditioning=embedding, or algorithm.tag_lr_scale=1")
    return float(scale)


def policy_param_groups(policy: torch.nn.Module, tag_lr_scale: float) -> list:
    """The policy's trainable parameters; with a tag_lr_scale other than 1, two groups: the rest, then the
    preference's own parameters (whose lr configure_optimizers scales)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    if tag_lr_scale == 1:
        return params
    own = {id(p) for p in preference_parameters(policy)}
    return [{"params": [p for p in params if id(p) not in own]}, {"params": [p for p in params if id(p) in own]}]
