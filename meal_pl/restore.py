"""Rebuild a trained MealModule from a checkpoint and its run directory (for generate/evaluate/export).

A Lightning checkpoint holds tensors, not the objects around them: the module is composed again from
the run's `.hydra/config.yaml` with the tokenizer saved in `<run dir>/tokenizer/`, then loaded.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue


def checkpoint_file(ckpt_path: str | Path) -> Path:
    """The checkpoint a `ckpt_path` names: the file itself, or a run directory's checkpoints/last.ckpt."""
    path = Path(ckpt_path)
    return path / "checkpoints" / "last.ckpt" if path.is_dir() else path


def find_checkpoint(ckpt_path: str) -> tuple[Path, Path]:
    """(checkpoint file, run directory); a run directory means its checkpoints/last.ckpt."""
    ckpt = checkpoint_file(ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no such checkpoint file (give a .ckpt file or a run directory)")
    run = ckpt.resolve().parent.parent
    if not (run / ".hydra" / "config.yaml").is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path!r}: no {run / '.hydra' / 'config.yaml'}; a checkpoint is rebuilt from the run it "
            "belongs to, so keep it in <run dir>/checkpoints/"
        )
    return ckpt, run


def load_run(ckpt_path: str, device: str = "cpu", reward_paths: dict[str, str] | None = None):
    """(module in eval mode on `device`, datamodule, config) of a training run's checkpoint; `reward_paths`
    ({objective: reward-model directory}) scores those objectives with other reward models than the run trained on."""
    from meal_pl.checkpoint import read_checkpoint
    from meal_pl.train import build  # deferred: train imports Hydra's app machinery

    target = resolve_device(device)  # a device this machine lacks is refused before minutes of loading
    ckpt, run = find_checkpoint(ckpt_path)
    state = read_checkpoint(ckpt)  # weights-only, and first: a refused file is refused before anything is built
    cfg: DictConfig = OmegaConf.load(run / ".hydra" / "config.yaml")
    with open_dict(cfg):
        cfg.paths.output_dir = str(run)
        for name, path in (reward_paths or {}).items():
            reward = cfg.objective.rewards.get(name)
            if reward is None or "path" not in reward:
                raise ValueError(f"judge={name}={path}: the run's objective has no reward {name!r} read from a directory "
                                 f"(objective.rewards.{name}.path); its rewards: {sorted(cfg.objective.rewards)}")
            reward.path = path
    try:
        datamodule, module = build(cfg, tokenizer_dir=run / "tokenizer")
    except (InstantiationException, ConfigAttributeError, ConfigKeyError, MissingMandatoryValue) as err:
        raise ValueError(config_error_line(run, err)) from None
    module.load_state_dict(state["state_dict"])
    module.rewards.place(target)  # reward models that follow the policy (device: auto)
    return module.to(target).eval(), datamodule, cfg


def config_error_line(run: Path, err: Exception) -> str:
    """`run ...: its config cannot be rebuilt (key ...): reason` from Hydra's or OmegaConf's multi-line error."""
    text = str(err)
    key = getattr(err, "full_key", None) or next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("full_key:")), None)
    reason = " ".join(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("full_key:"))
    reason = reason.replace(", set env var HYDRA_FULL_ERROR=1 to see chained exception", "").rstrip(".") or type(err).__name__
    where = f" (key {key})" if key else ""
    return (f"run {run}: its config {run / '.hydra' / 'config.yaml'} cannot be rebuilt{where}: {reason}; a run directory's "
            "config names code to build, so use run directories you trust")


def resolve_device(device: str) -> torch.device:
    """`cpu`, `cuda`, `cuda:N` or `auto`; a CUDA device this machine lacks is refused here, not deep in `.to()`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a device; give device=cpu, cuda, cuda:N or auto") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device}: this machine's torch sees no CUDA device; give device=cpu (or device=auto)")
    if chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device}: meal-pl's checkpoint commands run on cpu or cuda; give device=cpu, cuda or auto")
    return chosen


SCALARS = {"int": (int, "an integer"), "bool": (bool, "true or false")}


def check_scalar(key: str, text: str, value: Any, annotation: str) -> None:
    """An integer or boolean argument must parse as one (or as null where the field allows it): `seed=abc` would
    otherwise fail later as `invalid literal for int()`, naming no key."""
    names = [name.strip() for name in annotation.split("|")]
    kinds = [SCALARS[name] for name in names if name in SCALARS]
    if not kinds or (value is None and "None" in names):
        return
    if any(isinstance(value, kind) and (kind is bool or not isinstance(value, bool)) for kind, _ in kinds):
        return
    what = " or ".join(description for _, description in kinds) + (" (or null)" if "None" in names else "")
    raise ValueError(f"{key}={text} is not {what}")


def parse_args(argv: list[str], defaults: Any, required: tuple[str, ...] = ()) -> Any:
    """`key=value` arguments onto a dataclass of defaults: the documented CLI syntax, nothing more.

    Values are read as YAML (`[0.8,0.2]`, `true`, `16`), except for fields typed `str`, which keep their
    text verbatim so that a prompt may hold commas, colons or quotes.
    """
    known = {f.name: f for f in fields(defaults)}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in known:
            raise ValueError(f"argument {arg!r} is not key=value with a key in {sorted(known)}")
        if str(known[key].type).startswith("str"):
            setattr(defaults, key, value)
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"{key}={value!r} is not a valid value ({err.__class__.__name__})") from None
        check_scalar(key, value, parsed, str(known[key].type))
        setattr(defaults, key, parsed)
    missing = [name for name in required if getattr(defaults, name) in (None, "")]
    if missing:
        raise ValueError(f"missing required argument(s): {', '.join(f'{m}=...' for m in missing)}")
    return defaults


def cli_help(main: Callable[[list[str]], None], args_type: type | None) -> str:
    """The command's docstring and, for each `key=value` argument, its default and the comment beside it."""
    module = sys.modules[main.__module__]
    name = module.__spec__.name if module.__spec__ else main.__module__
    lines = [f"python -m {name} key=value ...", "", (module.__doc__ or "").strip(), ""]
    if args_type is not None:
        comments = {}
        for line in inspect.getsource(args_type).splitlines():
            match = re.match(r"\s+(\w+):[^#]*#\s*(.*)", line)
            if match:
                comments[match.group(1)] = match.group(2)
        lines.append("arguments:")
        for field in fields(args_type):
            default = field.default if field.default is not MISSING else None
            note = f"  {comments[field.name]}" if field.name in comments else ""
            shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
            lines.append(f"  {field.name}={shown}{note}")
    return "\n".join(lines)


def run_cli(main: Callable[[list[str]], None], args_type: type | None = None) -> None:
    """Run a CLI's main; `--help` prints its arguments; a user error (bad path, bad value) is one line on
    stderr and exit status 2."""
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(cli_help(main, args_type))
        raise SystemExit(0)
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
