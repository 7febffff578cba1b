"""The warm start as its own stage: SFT or DPO on answer pairs before the online phase, written once as a directory
that every later run with the same settings reuses (`python -m meal_pl.warm_start`, or any `train` run).

A warm start is determined by the model, the data, the conditioning, the objective's rewards, its own settings
(config group `warm_start`) and its seed; `warm_start_settings(cfg)` collects exactly these and their digest names
the directory `<warm_start.cache_dir>/<digest>/`. Seeds, sweeps and reruns that share them train it once.

The directory: `weights.safetensors` (the policy's trainable tensors after the warm start, before LoRA is folded into
the base, and the reward normaliser's statistics it set), `settings.json` (what made it), `metrics.json` (loss
curve; for DPO TRL's held-out `rewards/accuracies` and `rewards/margins`), `rng.json` where the warm start ran in
the run's own random stream (`warm_start.seed=null`), so a run that reuses it continues exactly as one that trained
it. It is written under a temporary name and renamed when complete (a killed stage is never reused), under a file
lock (two jobs of a multirun that need the same warm start: one trains it, the other waits and reads it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from meal_pl.ranges import check_integer, check_number

_log = logging.getLogger("meal_pl")

SOURCES = ("data", "policy")  # the data's answers, or the policy's own (RiC's offline stage on what it writes)
LOSSES = ("sft", "dpo")
# Bumped when the stage's code changes what it trains, so an older directory is not reused.
FORMAT_VERSION = 1
WEIGHTS, SETTINGS, METRICS, RNG = "weights.safetensors", "settings.json", "metrics.json", "rng.json"


class WarmStart:
    """The warm start's settings and the stage that gives a MealModule its warm-started policy (`prepare`)."""

    def __init__(self, steps: int = 0, lr: float = 2e-3, batch_size: int = 16, loss: str = "sft", source: str = "data",
                 answers: int = 2, prompts: int = 0, dpo_beta: float = 0.1, dpo_points: int = 0, sft_weight: float = 0.0,
                 heldout: float = 0.0,
                 seed: int | None = None, path: str | None = None, cache_dir: str | None = None, reuse: bool = True,
                 tags: str = "achieved", objective_steps: int | None = None) -> None:
        if loss not in LOSSES:
            raise ValueError(f"warm_start.loss={loss!r}; choose one of {LOSSES}")
        if source not in SOURCES:
            raise ValueError(f"warm_start.source={source!r}; choose one of {SOURCES}")
        # objective.warm_start_steps (an objective whose premise needs its own length) wins over warm_start.steps.
        self.steps = int(steps if objective_steps is None else objective_steps)
        check_integer("warm_start.steps", self.steps, 0, " (0: no warm start)")
        check_number("warm_start.lr", lr, strict=True, note=", e.g. 2e-3")
        check_number("warm_start.dpo_beta", dpo_beta, strict=True, note=", e.g. 0.1")
        check_number("warm_start.sft_weight", sft_weight, note=" (0: DPO alone; TRL's rpo_alpha, e.g. 1.0)")
        check_integer("warm_start.batch_size", batch_size, 1)
        check_integer("warm_start.answers", answers, 1)
        check_integer("warm_start.prompts", prompts, 0, " (0: every training prompt)")
        check_integer("warm_start.dpo_points", dpo_points, 0, " (0: the simplex's corners)")
        if not (isinstance(heldout, (int, float)) and 0 <= heldout < 1):
            raise ValueError(f"warm_start.heldout={heldout!r} must be a share in [0, 1) of the training prompts held out "
                             "for the stage's metrics, e.g. 0.1")
        if seed is not None:
            check_integer("warm_start.seed", seed, 0, " (or null: the run's own seed and random stream)")
        self.lr, self.batch_size, self.loss, self.source = float(lr), batch_size, loss, source
        self.answers, self.prompts, self.dpo_beta, self.dpo_points = answers, prompts, float(dpo_beta), dpo_points
        self.sft_weight = float(sft_weight)
        self.heldout, self.seed, self.path, self.reuse, self.tags = float(heldout), seed, path, bool(reuse), tags
        self.cache_dir = cache_dir
        self.settings: dict[str, Any] | None = None  # what determines it (bind); None: trained in place, not kept

    def bind(self, settings: dict[str, Any]) -> WarmStart:
        """Give the stage what determines it (`warm_start_settings(cfg)`), so that it can be kept and reused."""
        self.settings = settings
        return self

    def digest(self) -> str:
        return settings_digest(self.settings or {})

    # ----- the stage ---------------------------------------------------------------------------------
    def prepare(self, module, datamodule) -> dict[str, Any] | None:
        """Warm-start `module`'s policy: read a kept directory whose settings match, else train and keep it. Then
        pi_ref is re-synced to the warm-started policy. Returns what the stage did and measured (None: no warm start)."""
        if self.steps <= 0:
            return None
        announce = module._trainer is None or module.trainer.is_global_zero
        if self.path is not None:
            found = Path(self.path)
            if not (found / WEIGHTS).is_file():
                raise FileNotFoundError(f"warm_start.path={self.path}: no {WEIGHTS} there; give a directory that "
                                        "python -m meal_pl.warm_start wrote, or warm_start.path=null")
            return self._read(module, found, announce, given=True)
        if self.settings is None or self.cache_dir is None or not self.reuse:
            info = self._train(module, datamodule, announce)
            info.pop("rng", None)
            self._adopt(module)
            return info
        cache = Path(self.cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        final = cache / self.digest()
        with file_lock(cache / f".{final.name}.lock"):  # another job training the same one: wait for it, then read it
            if (final / WEIGHTS).is_file():
                return self._read(module, final, announce)
            info = self._train(module, datamodule, announce)
            write_directory(final, module, self, info)
        if announce:
            _log.info(f"warm start kept in {final} (reused by every run with the same settings)")
        self._adopt(module)
        return info | {"directory": str(final)}

    def _train(self, module, datamodule, announce: bool) -> dict[str, Any]:
        from meal_pl.sft import run_warm_start  # deferred: sft imports the policy's code

        start = time.perf_counter()
        with own_random_stream(self.seed):
            info = run_warm_start(module, self, datamodule, announce)
            info["rng"] = rng_states() if self.seed is None else None  # where the run's own stream continues
        info["seconds"] = round(time.perf_counter() - start, 1)
        info["reused"] = False
        if announce:
            _log.info(f"warm start done in {info['seconds']:.0f} s: {summary_line(info)}")
        return info

    def _read(self, module, directory: Path, announce: bool, given: bool = False) -> dict[str, Any]:
        kept = json.loads((directory / SETTINGS).read_text())
        if not given and kept != json.loads(json.dumps(self.settings)):
            raise RuntimeError(f"warm start {directory}: its settings.json does not match this run's, though its name "
                               "does; remove the directory")
        if given and self.settings is not None and kept != json.loads(json.dumps(self.settings)):
            differ = sorted(k for k in set(kept) | set(self.settings) if kept.get(k) != json.loads(json.dumps(self.settings.get(k))))
            _log.warning(f"warm_start.path={directory} was made with other settings than this run's ({', '.join(differ)}); "
                         "used as given")
        load_weights(module, directory / WEIGHTS)
        if (directory / RNG).is_file() and self.seed is None:
            set_rng_states(json.loads((directory / RNG).read_text()))
        info = json.loads((directory / METRICS).read_text()) | {"reused": True, "directory": str(directory)}
        if announce:
            _log.info(f"warm start reused from {directory} ({summary_line(info)}); warm_start.reuse=false trains a new one")
        self._adopt(module)
        return info

    @staticmethod
    def _adopt(module) -> None:
        """The warm-started policy becomes pi_ref: LoRA folded into the base, or the frozen copy re-synced."""
        from meal_pl.models import fold_lora

        if module.ref is None:
            fold_lora(module.policy)
            module.conditioner.snapshot(module.policy)  # the backend's own parameters too, for pi_ref's frozen copy
        else:
            module.ref.load_state_dict(module.policy.state_dict())


def summary_line(info: dict[str, Any]) -> str:
    """The stage's figures in one line: the loss's first and last tenth, and TRL's held-out DPO figures."""
    loss = info.get("loss", {})
    line = f"loss {loss.get('first_tenth', float('nan')):.3f} -> {loss.get('last_tenth', float('nan')):.3f} (mean of the first and last tenth of {loss.get('steps', 0)} steps)"
    held = info.get("heldout") or {}
    if "rewards/accuracies" in held:
        line += (f"; held-out pairs {held['pairs']}: accuracy {held['rewards/accuracies']:.3f}, margin "
                 f"{held['rewards/margins']:+.3f}")
    elif "nll_after" in held:
        line += f"; held-out answers {held['answers']}: NLL {held['nll_before']:.3f} -> {held['nll_after']:.3f}"
    return line


# ----- what determines a warm start -----------------------------------------------------------------
# Settings of the run that never change what the warm start trains (where the stage is kept, whether it is reused).
_STAGE_ONLY = ("path", "cache_dir", "reuse")
# Model settings that change how a result is computed, not the result (activations recomputed in the backward pass).
_SAME_RESULT = ("gradient_checkpointing",)
# The data's settings that only the online phase reads: its batches, their shuffling, the loader's workers.
_ONLINE_DATA = ("batch_size", "seed", "num_workers")


def warm_start_settings(cfg: DictConfig) -> dict[str, Any]:
    """Everything that determines the warm start of the run `cfg` describes, resolved: the model, the data (less its
    online batches and their shuffling), the conditioning, the objective, the warm start's own settings, the prompt and answer lengths, the
    sampler where the policy writes its own answers, the precision, and the run's seed where the stage uses its
    stream (warm_start.seed=null)."""
    def plain(node) -> Any:
        return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node

    stage = {k: v for k, v in plain(cfg.warm_start).items() if k not in _STAGE_ONLY and k != "_target_"}
    data = {k: v for k, v in plain(cfg.data).items() if k not in _ONLINE_DATA}
    algorithm = cfg.algorithm
    settings = {
        "format": FORMAT_VERSION, "model": {k: v for k, v in plain(cfg.model).items() if k not in _SAME_RESULT},
        "data": data, "conditioning": plain(cfg.get("conditioning")),
        "objective": plain(cfg.objective), "warm_start": stage,
        "max_prompt_length": algorithm.get("max_prompt_length"), "prompt_overflow": algorithm.get("prompt_overflow"),
        "max_new_tokens": algorithm.sampler.get("max_new_tokens"), "relabel_tau": algorithm.sampler.get("relabel_tau"),
        "precision": str(cfg.trainer.get("precision")), "frozen_weights_dtype": str(cfg.get("frozen_weights_dtype")),
    }
    if stage.get("source") == "policy":  # the policy's own answers: how it samples them
        settings["sampler"] = {k: v for k, v in plain(algorithm.sampler).items() if k != "_target_"}
    if stage.get("seed") is None:
        settings["seed"] = int(cfg.seed)
    return settings


def settings_digest(settings: dict[str, Any]) -> str:
    """A short stable name for a warm start's settings."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----- the directory --------------------------------------------------------------------------------
@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on `path` across processes (held until the block ends or the process dies)."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def trainable_tensors(module) -> dict[str, torch.Tensor]:
    """What a warm start changes: the policy's trainable parameters and the reward normaliser's statistics."""
    tensors = {f"policy.{n}": p.detach().cpu().contiguous() for n, p in module.policy.named_parameters() if p.requires_grad}
    tensors |= {f"reward_norm.{n}": b.detach().cpu().contiguous() for n, b in module.reward_norm.named_buffers()}
    return tensors


def write_directory(final: Path, module, stage: WarmStart, info: dict[str, Any]) -> None:
    """Write the kept warm start under a temporary name, then rename it: a directory under its final name is whole."""
    from safetensors.torch import save_file

    temporary = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    save_file(trainable_tensors(module), str(temporary / WEIGHTS))
    (temporary / SETTINGS).write_text(json.dumps(stage.settings, indent=1, sort_keys=True, default=str))
    rng = info.pop("rng", None)
    if rng is not None:
        (temporary / RNG).write_text(json.dumps(rng))
    (temporary / METRICS).write_text(json.dumps(info, indent=1))
    os.replace(temporary, final)  # atomic on one file system; `final` does not exist (the lock is held)


def load_weights(module, path: Path) -> None:
    """Copy a kept warm start's tensors into the module; refused in one line if they do not fit its policy."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    own = {f"policy.{n}": p for n, p in module.policy.named_parameters() if p.requires_grad}
    own |= {f"reward_norm.{n}": b for n, b in module.reward_norm.named_buffers()}
    if set(own) != set(tensors) or any(own[k].shape != tensors[k].shape for k in own):
        raise ValueError(f"warm start {path.parent} does not fit this policy (other trainable parameters or shapes); "
                         "give a warm_start.path made for this model and conditioning, or warm_start.path=null")
    with torch.no_grad():
        for key, target in own.items():
            target.copy_(tensors[key].to(target.device))


@contextlib.contextmanager
def own_random_stream(seed: int | None):
    """Run the stage in its own seeded random stream (torch, numpy, random), leaving the run's untouched; with
    seed None, in the run's own stream (the figures of runs made before the stage was kept stay as they were)."""
    if seed is None:
        yield
        return
    saved = rng_states()
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        set_rng_states(saved)


def rng_states() -> dict[str, Any]:
    """The process's random states (torch CPU and CUDA, numpy, random) as JSON-able values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    states = {"torch": torch.get_rng_state().tolist(), "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
              "random": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        states["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["random"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in states["cuda"]])


# ----- the command ------------------------------------------------------------------------------------
def stage_main(cfg: DictConfig) -> dict[str, Any]:
    """`python -m meal_pl.warm_start [train's overrides]`: the warm start `train` with the same overrides would use,
    trained (or found) and kept; prints its directory and figures."""
    import lightning as L

    from meal_pl.logs import route_library_logs
    from meal_pl.precision import use_run_precision
    from meal_pl.train import build, check_run_settings

    route_library_logs()
    check_run_settings(cfg)
    if cfg.get("threads") is not None:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module = build(cfg)
    stage = module.warm_start
    if stage is None or stage.steps <= 0:
        raise ValueError("warm_start.steps=0: this config has no warm start to train; give warm_start.steps >= 1")
    use_run_precision(module, cfg, module.device)  # the precision the run's own fit would warm-start in
    info = stage.prepare(module, datamodule) or {}
    directory = info.get("directory", "(not kept: warm_start.reuse=false)")
    print(f"warm start: {directory}\n  {summary_line(info)}\n  train uses it with the same overrides (or "
          f"warm_start.path={directory})", flush=True)
    return info


def _hydra_main() -> None:
    import hydra

    from meal_pl.runs import CONF_DIR

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="warm_start_stage")
    def main(cfg: DictConfig) -> None:
        import sys

        from meal_pl.runs import one_line

        try:
            stage_main(cfg)
        except Exception as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(one_line(err), file=sys.stderr)
            sys.exit(1)

    main()


if __name__ == "__main__":
    from meal_pl.runs import run_checked

    run_checked(_hydra_main, "warm_start_stage")
