"""Checkpoints that survive a crash and resume exactly: atomic writes, refusal of bad files, RNG states.

A checkpoint holds everything a run needs to continue bit-for-bit on CPU: Lightning's own state (both
optimisers, the LR schedule, the loop counters from which the data position is derived), the module's
state_dict (policy, pi_ref, PWN, running reward statistics) and, under "meal_state", the rejection-sampling
buffers, counters, RNG states and what the checkpoint must match to be resumed (objectives, tokenizer).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import tempfile
import warnings
from collections import deque
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

# Resuming always writes into a new run directory (README: outputs/ is append-only), so ModelCheckpoint's
# notice that the checkpoint directory changed is expected, not a problem.
warnings.filterwarnings("ignore", message=r"The dirpath has changed from .*")


class SafeCheckpointIO(TorchCheckpointIO):
    """Writes to a temp file in the target directory, fsyncs, then renames; refuses unreadable files on load.

    Lightning's own save goes through an fsspec transaction whose temp file lives in the system temp dir, so
    the final move can be a copy across file systems that a kill leaves half-done. os.replace within one
    directory is atomic on POSIX: a reader sees the old file or the new one, never a torn one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: keep Lightning's behaviour
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)  # make the rename itself durable

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Resume's load: weights-only whatever Lightning asks (`weights_only` is ignored), see read_checkpoint."""
        if not os.path.isfile(path) and "://" not in str(path):
            raise FileNotFoundError(f"checkpoint not found: {path} (ckpt_path); give an existing .ckpt file or ckpt_path=last")
        if "://" in str(path):  # remote files go through Lightning's fsspec reader, still weights-only
            return _checked(path, lambda: super(SafeCheckpointIO, self).load_checkpoint(
                path, map_location=map_location or (lambda s, _: s), weights_only=True))
        return read_checkpoint(path, map_location)


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A meal-pl checkpoint, loaded weights-only: tensors, numbers, strings and plain containers, which is all that
    meal-pl writes. Anything else (a pickled object that would run code on load) is refused with one line naming
    the file and the type, and nothing of it runs; so are torn files and other programs' checkpoints."""
    return _checked(path, lambda: torch.load(path, map_location=map_location or (lambda s, _: s), weights_only=True))


def _checked(path: str | Path, load) -> dict[str, Any]:
    try:
        checkpoint = load()
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for torn or foreign files
        # torch's weights-only unpickler opens with a paragraph about its defaults; the cause is further down.
        unpickler = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch names the type it would have had to build
        if refused:
            raise ValueError(
                f"checkpoint {path} refused: it holds a {refused.group(1)} object, which only a full unpickle could build "
                "(and that may run code); meal-pl checkpoints hold tensors, numbers, strings and containers only. Load "
                "checkpoints from people you trust, and share exported directories (safetensors) instead"
            ) from None
        lines = str(e).strip().splitlines()
        reason = f"unpickling: {unpickler.group(1).strip()}" if unpickler else lines[0] if lines else type(e).__name__
        raise ValueError(
            f"checkpoint {path} is corrupt or not a checkpoint ({reason}); resume from another one, e.g. an "
            "earlier run's checkpoints/last.ckpt"
        ) from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "meal_state" not in checkpoint:
        raise ValueError(f"checkpoint {path} was not written by meal-pl (no 'state_dict'/'meal_state'); it cannot be loaded")
    return checkpoint


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also writes last.ckpt when training ends, so `last` is the end of the run.

    Lightning only writes it at train end when no periodic save happened; a finished run would otherwise
    resume from its last every_n_train_steps multiple. (Uses ModelCheckpoint's private helpers: lightning<2.7.)
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and not trainer.fast_dev_run and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """A save at train end that fell on an epoch's last batch: start the next epoch at its first batch.

        Lightning then holds a finished epoch (ready == completed) whose batch counter still reads "all batches
        done"; restored as is, it would count that as the next epoch's progress and skip the whole epoch.
        The uninterrupted run resets the counter when the next epoch starts; so does this.
        """
        loops = checkpoint.get("loops", {}).get("fit_loop", {})
        epochs, batches = loops.get("epoch_progress"), loops.get("epoch_loop.batch_progress")
        if epochs and batches and epochs["current"]["ready"] == epochs["current"]["completed"]:
            batches["current"] = dict.fromkeys(batches["current"], 0)
            batches["is_last_batch"] = False


def collect_rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python global RNG states, in types that torch.load(weights_only) accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of collect_rng_states."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the vocabulary: the tiny model's tokenizer is trained on the data, so it can differ."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha1(repr(vocab).encode()).hexdigest()[:16]


def check_steps_left(checkpoint: dict[str, Any], max_steps: int | None, path: Any) -> None:
    """Refuse to resume a checkpoint already at trainer.max_steps: Lightning would stop at once and the run would
    write no evaluation and no checkpoint, with nothing said."""
    step = checkpoint.get("global_step", 0)
    if max_steps is not None and 0 < max_steps <= step:
        raise ValueError(f"checkpoint {path} is at step {step} and trainer.max_steps={max_steps}: nothing is left to "
                         f"train; give trainer.max_steps > {step} to train on (python -m meal_pl.evaluate "
                         "ckpt_path=... evaluates it as it is)")


def check_compatible(
    checkpoint: dict[str, Any], module: torch.nn.Module, identity: dict[str, Any], path: Any, strategy: Any = None
) -> None:
    """Refuse a checkpoint written for other objectives, another tokenizer or other tensor shapes, naming what differs."""
    saved_identity = checkpoint.get("meal_state", {}).get("identity", {})
    for key, fix in (("objective_names", "the same objective=..."), ("tokenizer", "the same data and model")):
        if key in saved_identity and saved_identity[key] != identity[key]:
            raise ValueError(
                f"checkpoint {path} does not match this run: {key} {saved_identity[key]} in the checkpoint, "
                f"{identity[key]} in this run; resume with {fix} as the run that wrote it, or start a new run without ckpt_path"
            )
    # FSDP/DeepSpeed/model-parallel hold wrapped or sharded parameters whose names and shapes are not the plain
    # module's: there only the identity above is compared.
    if isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)) or "state_dict" not in checkpoint:
        return
    saved, own = checkpoint["state_dict"], module.state_dict()
    missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    reshaped = sorted(k for k in own.keys() & saved.keys() if tuple(own[k].shape) != tuple(saved[k].shape))
    if missing or unexpected or reshaped:
        if reshaped:
            k = reshaped[0]
            example = f"{k}: checkpoint {tuple(saved[k].shape)}, this model {tuple(own[k].shape)}"
        else:
            example = f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}"
        raise ValueError(
            f"checkpoint {path} does not match this model: {len(reshaped)} tensors differ in shape, {len(missing)} are "
            f"missing, {len(unexpected)} unexpected (e.g. {example}); resume with the model/pwn config the checkpoint "
            "was trained with"
        )


# What makes two runs "the same experiment" for ckpt_path=last: their config-group choices. `conditioning` is
# compared too once it exists as a group (a missing group reads as None on both sides).
IDENTITY_GROUPS = ("objective", "model", "algorithm", "conditioning")


def run_identity(choices: Any) -> dict[str, Any]:
    """{group: chosen option} for IDENTITY_GROUPS, from Hydra's runtime choices."""
    choices = choices or {}
    return {group: choices.get(group) for group in IDENTITY_GROUPS}


def saved_identity(run_dir: Path) -> dict[str, Any] | None:
    """The identity of an earlier run, from its .hydra/hydra.yaml; None when the run did not record one."""
    from omegaconf import OmegaConf  # local: keeps this module light for the checkpoint IO path

    path = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    try:
        choices = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.choices")
    except Exception:
        return None
    return run_identity(choices) if choices is not None else None


def describe(identity: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in identity.items() if v is not None)


def find_last_checkpoint(
    runs_dir: str | Path, exclude: str | Path | None = None, identity: dict[str, Any] | None = None
) -> Path:
    """`ckpt_path=last`: the newest <runs_dir>/*/checkpoints/last.ckpt, other than the current run's.

    With `identity`, only runs with the same config-group choices (run_identity) qualify.
    """
    runs_dir = Path(runs_dir)
    excluded = Path(exclude).resolve() if exclude is not None else None
    candidates = [p for p in runs_dir.glob("*/checkpoints/last.ckpt") if p.parents[1].resolve() != excluded]
    if not candidates:
        raise FileNotFoundError(
            f"ckpt_path=last: no earlier run has a checkpoint ({runs_dir}/*/checkpoints/last.ckpt); give the path "
            "of a .ckpt file, or drop ckpt_path to start a new run"
        )
    if identity is not None:
        matching = [p for p in candidates if saved_identity(p.parents[1]) == identity]
        if not matching:
            raise FileNotFoundError(
                f"ckpt_path=last: none of the {len(candidates)} earlier runs with a checkpoint in {runs_dir} has "
                f"{describe(identity)}; give that run's .ckpt path, change objective/model/algorithm to match "
                "the run you mean, or drop ckpt_path to start a new run"
            )
        candidates = matching
    return max(candidates, key=lambda p: p.stat().st_mtime)


def meal_state(module: Any) -> dict[str, Any]:
    """What a MealModule keeps beyond its state_dict: buffers, counters, RNG states, identity, the PWN's optimiser."""
    return {
        "meta_buffer": list(module.meta_buffer), "alt_buffer": module.alt_buffer, "counters": dict(module.counters),
        # gen_time is wall-clock, not state: zeroed so that a resumed run's checkpoints equal the uninterrupted ones
        "pending": [{f.name: 0.0 if f.name == "gen_time" else getattr(r, f.name) for f in fields(r)} for r in module.pending],
        "rng": collect_rng_states(), "identity": module.identity(),
        "pwn_optimizer": None if module.pwn_opt is None else module.pwn_opt.state_dict(),
    }


def restore_meal_state(module: Any, state: dict[str, Any]) -> None:
    """Inverse of meal_state; the RNG states wait in module.rng_to_restore for the first resumed step."""
    module.meta_buffer = deque(state.get("meta_buffer", []), maxlen=module.meta.buffer_size)
    module.alt_buffer = state.get("alt_buffer", [])
    from meal_pl.rollout import Rollout

    module.pending = [Rollout(**r) for r in state.get("pending", [])]
    module.counters.update(state.get("counters", {}))
    module.rng_to_restore = state.get("rng")
    module._pwn_opt_state = state.get("pwn_optimizer")
