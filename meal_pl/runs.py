"""Run directories and failures: never write into an earlier run, report bad input in one line, keep sweeps going.

- `check_group_overrides` turns an unknown config-group option into one line that lists the choices.
- `record_failure` writes a failed run's line and traceback to <run dir>/error.txt and, in a sweep, appends
  the line to <sweep dir>/failed_jobs.txt; the entry point prints the line (no traceback) and exits 1, or,
  in a sweep, returns so that the other jobs run and keep their outputs.
- `RunGuard` (a Hydra callback) refuses a run or sweep directory that already holds files, and `ckpt_path=last`
  when no earlier run matches (exit 2, before the run directory exists), and
  fails a sweep at its end when failed_jobs.txt lists any job (exit 1). It exits rather than raises:
  Hydra turns a callback's exception into a warning and carries on.
"""

from __future__ import annotations

import os
import sys
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from meal_pl.config_check import check_key_overrides

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# A short unique id in run directory names (conf/hydra/default.yaml), so two runs started in the same second never
# share one; registered here, where every Hydra app of meal-pl imports it from.
OmegaConf.register_new_resolver("meal_run_id", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True)
FAILED_JOBS = "failed_jobs.txt"


class RunGuard(Callback):
    """Never start in a directory that holds an earlier run (outputs/ is only appended to); fail a sweep at its
    end if any of its jobs failed, after all of them ran."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Lightning's DDP launcher re-runs this command for ranks > 0 with the run dir that rank 0 already
        # created (and set LOCAL_RANK): those processes join the run, they do not start one.
        if os.environ.get("LOCAL_RANK", "0") != "0":
            return
        _refuse_used_dir(config.hydra.run.dir, "hydra.run.dir")
        _refuse_unmatched_last(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_used_dir(config.hydra.sweep.dir, "hydra.sweep.dir")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = Path(config.hydra.sweep.dir) / FAILED_JOBS
        if failed.is_file():
            count = len(failed.read_text().splitlines())
            _exit(f"error: {count} multirun job(s) failed, the others completed; see {failed} and each job's error.txt", 1)


def _refuse_used_dir(directory: str, key: str) -> None:
    path = Path(directory)
    if path.is_dir() and any(path.iterdir()):
        _exit(
            f"error: {key}={directory} already holds an earlier run; meal-pl never writes into one: choose a new "
            f"{key} or drop the override (the default is a fresh time-stamped directory)",
            2,
        )


def _refuse_unmatched_last(config: DictConfig) -> None:
    """`ckpt_path=last` with no earlier run of the same objective/model/algorithm: refused before Hydra creates
    the run directory, so a refused start leaves nothing behind."""
    if config.get("ckpt_path") != "last":
        return
    from meal_pl.checkpoint import find_last_checkpoint, run_identity  # deferred: torch/lightning imports

    runs_dir = Path(str(config.paths.root_dir)) / str(config.task_name)
    try:
        find_last_checkpoint(runs_dir, identity=run_identity(config.hydra.runtime.choices))
    except FileNotFoundError as err:
        _exit(f"error: {err}", 2)


def _exit(line: str, code: int) -> NoReturn:
    print(line, file=sys.stderr)
    sys.exit(code)


def check_group_overrides(args: list[str], conf_dir: Path = CONF_DIR) -> None:
    """ValueError naming the option and the choices when `group=option` names no conf/<group>/<option>.yaml."""
    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except Exception:  # let Hydra report what it cannot parse, in its own words
        return
    for override in overrides:
        group = override.key_or_group
        if override.is_delete() or group == "hydra" or not (conf_dir / group).is_dir():
            continue
        value = override.value()
        if isinstance(value, ChoiceSweep):
            options = [str(v) for v in value.list]
        elif isinstance(value, str):
            options = [value]
        else:  # glob/range sweeps and null: Hydra checks them
            continue
        choices = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        for option in options:
            if option not in choices:
                raise ValueError(
                    f"{group}={option} is not a config option; choose one of: {', '.join(choices)} "
                    f"(files in conf/{group}/)"
                )


def run_checked(main: Callable[[], Any], config_name: str) -> None:
    """A Hydra app's console entry: the command line's group options and keys are checked against `config_name`
    before Hydra composes (Hydra's own messages span several lines); a ValueError is one line on stderr and exit
    status 2 (HYDRA_FULL_ERROR=1: the traceback)."""
    try:
        check_group_overrides(sys.argv[1:])
        check_key_overrides(sys.argv[1:], CONF_DIR, config_name)
    except ValueError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    main()


def one_line(err: BaseException) -> str:
    """`error: <message>` on one line; the type is added where the message alone would not say what went wrong."""
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__  # "Error in call to target ...": the validation error inside is the news
    if isinstance(err, MissingMandatoryValue) and getattr(err, "full_key", None):
        return f"error: {err.full_key} has no value (its config leaves it ???); give one on the command line: {err.full_key}=..."
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    if not isinstance(err, (ValueError, FileNotFoundError, RuntimeError, TypeError)):
        message = f"{type(err).__name__}: {message}"
    return f"error: {message}"


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(output_dir: str, err: BaseException) -> str:
    """Write the line and the traceback to <output_dir>/error.txt (and the line to the sweep's list); return the line."""
    line = one_line(err)
    if in_sweep():  # the job's overrides are in <output_dir>/.hydra/overrides.yaml
        line = line.replace("error: ", f"error: multirun job {HydraConfig.get().job.num} ({output_dir}): ", 1)
        with open(Path(HydraConfig.get().sweep.dir) / FAILED_JOBS, "a") as f:
            f.write(line + "\n")
    run_dir = Path(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    (run_dir / "error.txt").write_text(f"{line}\n\n{trace}")
    return line
