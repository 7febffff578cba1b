"""Entry point: `python -m meal_pl.train objective=helpful_harmless` (Hydra; add -m for sweeps)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

import meal_pl  # noqa: F401  (python -m meal_pl.<command> sets the offline default before transformers is imported)
from meal_pl import precision
from meal_pl.chat import use_chat_template
from meal_pl.checkpoint import describe, find_last_checkpoint, run_identity
from meal_pl.logs import config_summary, emit, error_log, route_library_logs
from meal_pl.ranges import check_integer
from meal_pl.restore import checkpoint_file
from meal_pl.rewards import RewardSet
from meal_pl.runs import CONF_DIR, in_sweep, record_failure, run_checked
from meal_pl.sweeps import log_hparams
from meal_pl.warm_start import warm_start_settings

# Lightning's own deprecation notice about torch's pytree API, printed on every run (pytest filters it too).
warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
# transformers' deprecation notice, raised by peft on every LoRA run (pytest filters it too).
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)


def build(cfg: DictConfig, tokenizer_dir: str | Path | None = None):
    """The datamodule and the MealModule a run's config describes (shared by train and the checkpoint CLIs).

    `tokenizer_dir` replaces the model builder's tokenizer by a saved one (tags included), so a checkpoint
    reloads with exactly the vocabulary it was trained with.
    """
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    model_cfg = cfg.model.copy()
    with open_dict(model_cfg):
        lora = model_cfg.pop("lora", None)  # applied by MealModule once the tag tokens exist
        chat_template = bool(model_cfg.pop("chat_template", False))  # prompts through the model's chat template
        checkpointing = bool(model_cfg.pop("gradient_checkpointing", False))
    policy, tokenizer = instantiate(model_cfg)(corpus=datamodule.corpus())
    if checkpointing:  # activations recomputed in the backward pass: less memory for a longer step
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        policy.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    use_chat_template(tokenizer, chat_template)
    rewards = RewardSet(instantiate(cfg.objective.rewards))
    objective = {k: v for k, v in OmegaConf.to_container(cfg.objective, resolve=True).items() if k != "rewards"}
    lora = OmegaConf.to_container(lora, resolve=True) if lora is not None else None
    # Runs saved before the conditioning group existed used tags.
    conditioner = instantiate(cfg.conditioning) if cfg.get("conditioning") is not None else None
    # The warm start is a stage of its own (meal_pl/warm_start.py), kept under what determines it; runs saved before
    # it was (their algorithm.warm_start_* keys) rebuild without one: a checkpoint never warm-starts again.
    warm_start = instantiate(cfg.warm_start).bind(warm_start_settings(cfg)) if cfg.get("warm_start") is not None else None
    algorithm = cfg.algorithm.copy()
    with open_dict(algorithm):
        for key in [k for k in algorithm if str(k).startswith("warm_start")]:
            algorithm.pop(key)
    module = instantiate(algorithm)(policy=policy, tokenizer=tokenizer, rewards=rewards, objective=objective, lora=lora,
                                    conditioner=conditioner, warm_start=warm_start)
    return datamodule, module


def check_run_settings(cfg: DictConfig) -> None:
    """The run-level settings Lightning would refuse late, vaguely, or not at all: one line naming the key."""
    if cfg.get("threads") is not None:
        check_integer("threads", cfg.threads, 1, " (torch threads), or null for torch's default")
    # Lightning's own message for a bad seed names numpy's bounds, not the key.
    check_integer("seed", cfg.seed, 0, most=2**32 - 1)
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        # Lightning's own message ("No supported gpu backend found!") names neither the setting nor the fix.
        raise ValueError(f"trainer.accelerator={accelerator} (hardware=gpu, fsdp and deepspeed) needs a CUDA GPU, and this "
                         "machine's torch sees none; use hardware=cpu, or hardware=cpu_bf16 on a CPU with bf16 units")
    if cfg.trainer.get("max_steps") == 0:
        # Lightning skips the fit loop, so no evaluation or checkpoint would save the minutes of warm start.
        raise ValueError("trainer.max_steps=0 trains no step, and the run would end with no evaluation and no checkpoint; "
                         "give trainer.max_steps >= 1 (with 1, pareto.json's initial_front is the warm-started policy's)")


def build_run(cfg: DictConfig):
    """Seed, then the datamodule, the module and the trainer with the config's callbacks and loggers."""
    check_run_settings(cfg)
    if cfg.get("threads") is not None:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module = build(cfg)
    save_run_files(cfg, module.tokenizer)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **precision_settings(cfg))
    return datamodule, module, trainer


def precision_settings(cfg: DictConfig) -> dict:
    """The trainer's `precision` and `plugins` with `auto` resolved for this device (meal_pl.precision), and
    the one line that says what the run uses."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    chosen, frozen = precision.resolve(cfg.trainer.get("precision"), str(cfg.get("frozen_weights_dtype", "float32")), accelerator)
    if rank_zero_only.rank == 0:
        emit([precision.describe(chosen, frozen, accelerator)])
    plugin = precision.precision_plugin(chosen, frozen, accelerator)
    if plugin is None:
        return {"precision": chosen}
    plugins = [instantiate(p) for p in cfg.trainer.get("plugins") or []]
    return {"precision": None, "plugins": [*plugins, plugin]}


def train(cfg: DictConfig) -> dict[str, float]:
    """Compose everything from config, fit, and return the final metrics (for sweepers)."""
    route_library_logs()
    ckpt_path = resolve_ckpt_path(cfg)  # before any work: a bad path fails at once
    if rank_zero_only.rank == 0:
        emit(config_summary(cfg, choices_of(cfg), ckpt_path))
    datamodule, module, trainer = build_run(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    log_hparams(trainer.loggers, cfg, metrics)
    return metrics


def choices_of(cfg: DictConfig) -> dict:
    """Hydra's config-group choices of this run (objective, model, algorithm, ...): the config's own hydra
    node when it has one (compose(..., return_hydra_config=True)), else the running Hydra app's."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    if choices is None and HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
    return dict(choices) if choices is not None else {}


@rank_zero_only
def save_run_files(cfg: DictConfig, tokenizer) -> None:
    """What generate/evaluate/export rebuild a checkpoint from: the config and the tokenizer with its tags.

    Hydra writes .hydra/config.yaml for command-line runs; a programmatic train(cfg) writes it here.
    """
    out = Path(cfg.paths.output_dir)
    config = out / ".hydra" / "config.yaml"
    if not config.is_file():
        config.parent.mkdir(parents=True, exist_ok=True)
        plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        OmegaConf.save(plain, config)
    hydra_file = out / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():  # the group choices, which ckpt_path=last matches runs by
        OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": choices_of(cfg)}}}), hydra_file)
    tokenizer.save_pretrained(str(out / "tokenizer"))


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path=last`: the newest checkpoints/last.ckpt among earlier runs of this task (not this run's)
    with the same objective, model, algorithm and conditioning.

    The resumed run writes into its own new directory, so the run it continues stays as it was.
    """
    if cfg.ckpt_path is None:
        return None
    if cfg.ckpt_path == "last":
        runs_dir = os.path.join(cfg.paths.root_dir, cfg.task_name)
        identity = run_identity(choices_of(cfg))
        found = find_last_checkpoint(runs_dir, exclude=cfg.paths.output_dir, identity=identity)
        if rank_zero_only.rank == 0:
            emit([f"ckpt_path=last: resuming {found} (the newest earlier run with {describe(identity)})"])
        return str(found)
    path = checkpoint_file(str(cfg.ckpt_path))  # a run directory too, as evaluate, generate and export take it
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file; give a .ckpt path, a run directory "
                                "(its checkpoints/last.ckpt) or ckpt_path=last")
    return str(path)


# An absolute config path: a relative one resolves against the calling module, which breaks when main()
# is called from anywhere but `python -m meal_pl.train` (a console script, a test).
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Exception as err:
        # One line for the user, the traceback in <run dir>/error.txt. Handled here, not by Hydra, whose report
        # starts with "Error executing job with overrides: [...]" and a traceback.
        line = record_failure(cfg.paths.output_dir, err)
        error_log.error(line)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(line, file=sys.stderr)
        if in_sweep():
            return None  # the other jobs still run; RunGuard fails the sweep at its end
        sys.exit(1)
    return metrics.get("pareto/hypervolume")


def cli() -> None:
    """Check group names, keys and value types before Hydra composes (its own messages span several lines)."""
    run_checked(main, "train")


if __name__ == "__main__":
    cli()
