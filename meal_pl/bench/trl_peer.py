"""The external peer: TRL's GRPOTrainer with fixed `reward_weights` on meal-pl's model, rewards and prompts.

This is the static-weight method most users would reach for. It starts from the same warm-started
policy as every meal-pl method, generates the same B x N samples per step with the same sampling
settings, and is scored on the same held-out prompts (untagged: GRPO never sees preference tags).
Optional: needs `pip install -e ".[bench]"` (trl).
"""

from __future__ import annotations

import copy
import importlib.util
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from meal_pl import precision
from meal_pl.chat import format_prompts
from meal_pl.escaping import encode_without_tags
from meal_pl.evaluation import under_seed
from meal_pl.models import is_peft
from meal_pl.sampling import encode_prompts, suppressed_ids
from meal_pl.train import build


def trl_available() -> bool:
    return importlib.util.find_spec("trl") is not None


def reward_func(name: str, fn):
    """A TRL reward function (prompts, completions, **kwargs) -> list[float] around one of ours. Our rewards read the
    data's own prompt text (the dataset's `hh_prompt` column, which TRL passes as a keyword), not the chat-templated
    text the policy reads, as for every other method."""

    def reward(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
        return [float(v) for v in fn(list(kwargs.get("hh_prompt") or prompts), list(completions))]

    reward.__name__ = name  # TRL logs each reward under its function's name
    return reward


def peer_prompts(tokenizer, prompts: list[str], max_prompt_length: int) -> list[str]:
    """The prompts as every meal-pl method's policy reads them, as text for TRL: through the model's chat template where
    the run uses one, tag strings escaped, the last max_prompt_length tokens (sampling.encode_prompts' rule)."""
    rows = encode_without_tags(tokenizer, format_prompts(tokenizer, prompts))
    return tokenizer.batch_decode([r[-max_prompt_length:] for r in rows])


def timed_generate(model) -> dict:
    """Wrap model.generate to count generated tokens and generation seconds, as meal-pl's perf/tokens_per_s."""
    stats = {"tokens": 0, "seconds": 0.0}
    generate, eos = model.generate, model.generation_config.eos_token_id

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = generate(*args, **kwargs)
        stats["seconds"] += time.perf_counter() - start
        new = out[:, kwargs["input_ids"].shape[1]:]
        is_eos = new == eos
        stats["tokens"] += int((((is_eos.long().cumsum(-1) - is_eos.long()) == 0)).sum())  # up to the first EOS
        return out

    model.generate = wrapper
    return stats


def run_trl(cfg: DictConfig, warmup_steps: int = 2, reward_weights: list[float] | None = None, evaluate: bool = True) -> dict:
    """Train GRPO for trainer.max_steps steps of B prompts x N samples; its one point, timings and samples.

    A LoRA policy (model.lora.r > 0) trains as GRPO's own peft LoRA with the same settings on the same base; under
    bf16-mixed GRPO runs in bf16 too, with a LoRA base loaded in bfloat16 when the frozen weights are
    (frozen_weights_dtype, meal_pl.precision). `evaluate=False` skips the evaluation (a speed measurement)."""
    if not trl_available():
        raise ModuleNotFoundError('trl is not installed: pip install -e ".[bench]" (or pip install trl)')
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    L.seed_everything(cfg.seed, workers=True)
    chosen, frozen = precision.resolve(cfg.trainer.get("precision"), str(cfg.get("frozen_weights_dtype", "float32")),
                                       str(cfg.trainer.get("accelerator", "cpu")))
    datamodule, module = build(cfg)  # same policy, tokenizer, rewards and data as the meal-pl runs
    if module.warm_start is not None:  # the same kept warm start as the meal-pl runs of this config
        module.warm_start.prepare(module, datamodule)
    tok, sampler = module.tokenizer, module.sampler
    B, N, K, steps = cfg.data.batch_size, sampler.num_samples, len(module.objective_names), int(cfg.trainer.max_steps)
    weights = reward_weights or [1.0 / K] * K
    prompts = peer_prompts(tok, datamodule.train_prompts, module.max_prompt_length)

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.wall, self.cpu, self.start = [], [], (0.0, 0.0)

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.wall.append(time.perf_counter() - self.start[0])
            self.cpu.append(time.process_time() - self.start[1])

    args = GRPOConfig(
        output_dir=cfg.paths.output_dir,
        per_device_train_batch_size=B * N,  # completions per step: B prompts x N generations
        num_generations=N,
        max_completion_length=sampler.max_new_tokens,
        temperature=sampler.temperature,
        top_k=sampler.top_k,
        top_p=sampler.top_p,
        generation_kwargs={"min_new_tokens": sampler.min_new_tokens, "suppress_tokens": suppressed_ids(module.tokenizer, module.conditioner.token_ids.flatten().tolist())},
        learning_rate=cfg.algorithm.policy_optimizer.lr,
        beta=module.beta,
        reward_weights=weights,
        max_steps=steps,
        seed=int(cfg.seed),
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        gradient_checkpointing=False,  # TRL turns it on by default; a micro model needs no memory saving
        bf16=chosen == "bf16-mixed",
    )
    # GRPO loads its policy and its KL reference from a path: save the warm-started policy and hand it over. A LoRA
    # policy goes over as the base model itself, (zero) adapters folded in, and GRPO puts its own LoRA on it.
    init_dir = Path(cfg.paths.output_dir) / "initial_policy"
    lora = cfg.model.get("lora") or {}
    peft_config, model = None, str(init_dir)
    if is_peft(module.policy):
        from peft import LoraConfig

        model = copy.deepcopy(module.policy).merge_and_unload()
        # A GGUF-loaded base is marked quantised (dequantised to float32 at load): nothing is quantised any more.
        model.hf_quantizer, model.is_quantized = None, False
        model.config.quantization_config = None
        if frozen == "bfloat16":
            model.to(torch.bfloat16)  # the base frozen in bfloat16, as meal-pl holds it; peft's adapters stay float32
        targets = lora.target_modules
        peft_config = LoraConfig(r=int(lora.r), lora_alpha=int(lora.alpha), lora_dropout=float(lora.dropout),
                                 target_modules=OmegaConf.to_container(targets) if OmegaConf.is_list(targets) else targets,
                                 task_type="CAUSAL_LM")
    else:
        module.policy.save_pretrained(init_dir)
    clock = StepClock()
    funcs = [reward_func(name, fn) for name, fn in module.rewards.rewards.items()]
    trainer = GRPOTrainer(
        model=model, reward_funcs=funcs, args=args, processing_class=tok,
        train_dataset=Dataset.from_dict({"prompt": prompts, "hh_prompt": list(datamodule.train_prompts)}), callbacks=[clock],
        peft_config=peft_config,
    )
    gen_stats = timed_generate(trainer.model)
    start = time.perf_counter()
    trainer.train()
    run_time = time.perf_counter() - start
    # Evaluate GRPO's policy with meal-pl's code. TRL's copy of the model carries no conditioning modules
    # (e.g. conditioning=embedding's map), which untagged generation never uses: only those may be missing.
    point = None
    if evaluate:
        missing, unexpected = module.policy.load_state_dict(trainer.model.state_dict(), strict=False)
        if unexpected or any("meal_preference" not in k for k in missing):
            raise RuntimeError(f"TRL's policy does not match meal-pl's: missing {missing}, unexpected {unexpected}")
        pe = cfg.callbacks.pareto_eval
        point = evaluate_untagged(module, datamodule.eval_prompts(pe.num_prompts), int(pe.get("draws", 1))).tolist()
    skip = warmup_steps if len(clock.wall) > warmup_steps else 0
    loss = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "point": point,
        "reward_weights": weights,
        "steps": trainer.state.global_step,
        "samples": trainer.state.global_step * B * N,
        "run_time": run_time,
        "policies": 1,
        "step_wall": clock.wall[skip:],
        "step_cpu": clock.cpu[skip:],
        "tokens_per_s": [gen_stats["tokens"] / max(gen_stats["seconds"], 1e-9)],
        "policy_loss": loss,
    }


@torch.no_grad()
def evaluate_untagged(module, prompts: list[str], draws: int = 1) -> torch.Tensor:
    """Mean raw rewards (K,) of responses without preference tags, each prompt's averaged over `draws` answers
    sampled under the seeds eval_seed, eval_seed + 1, ... (what the other methods' evaluation does)."""
    module.eval()
    per_draw = [under_seed(module, d, _untagged_rewards, module, prompts) for d in range(draws)]
    return torch.stack(per_draw).nanmean(0).nanmean(0)


def _untagged_rewards(module, prompts: list[str]) -> torch.Tensor:
    """Raw rewards (P,K) of one sampled response per prompt, without preference tags, at the eval seed."""
    with torch.random.fork_rng():
        torch.manual_seed(module.eval_seed)
        ids, mask, _ = encode_prompts(module.tokenizer, prompts, module.max_prompt_length, module.device)
        out = module.generate(ids, mask, greedy=module.eval_greedy, num_samples=1)
    return module.rewards(prompts, module.tokenizer.batch_decode(out, skip_special_tokens=True))
