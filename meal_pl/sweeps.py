"""Comparing runs: a sweep table as jobs finish, and TensorBoard hparams with the final hypervolume.

- `SweepSummary` (a Hydra callback, conf/hydra/default.yaml) writes `<job dir>/sweep_row.json` when a multirun
  job ends and rebuilds `<sweep dir>/sweep_summary.md` / `.json` from all rows so far, so a sweep that
  crashes halfway still leaves a table. Rows come from files (pareto.json, error.txt), so it works with any
  launcher: jobs in other processes (joblib, submitit) write their own row, whoever finishes last rebuilds.
- `log_hparams` records the full resolved config, flattened, with the final hypervolume as the metric:
  TensorBoard's HPARAMS tab then compares every run under `--logdir`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

ROW_FILE = "sweep_row.json"
SUMMARY = "sweep_summary"
HP_METRICS = {"pareto/hypervolume": "hp/final_hypervolume", "pareto/hypervolume_ratio": "hp/final_hypervolume_ratio"}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": value} with lists shown as text (TensorBoard hparams take scalars and strings only)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out |= flatten(value, f"{prefix}{key}.")
        return out
    key = prefix[:-1]
    if data is None or isinstance(data, (list, tuple)):
        return {key: str(data)}
    return {key: data}


def log_hparams(loggers: list, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """The resolved config (without hydra's own) and the final hypervolume, to every TensorBoard logger."""
    from lightning.pytorch.loggers import TensorBoardLogger

    tensorboards = [lg for lg in loggers if isinstance(lg, TensorBoardLogger)]
    if not tensorboards:
        return
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        params = flatten(OmegaConf.to_container(plain, resolve=True))
    except Exception:  # an interpolation that only resolves inside Hydra's app: keep the text
        params = flatten(OmegaConf.to_container(plain, resolve=False))
    hp = {name: metrics[key] for key, name in HP_METRICS.items() if key in metrics}
    for logger in tensorboards:
        logger.log_hyperparams(params, metrics=hp or None)
        logger.save()


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def job_row(job_dir: Path, overrides: list[str], seconds: float | None) -> dict[str, Any]:
    """One sweep row from a finished job's directory."""
    row: dict[str, Any] = {"job": job_dir.name, "overrides": " ".join(overrides), "status": "completed",
                           "hypervolume": None, "hypervolume_ratio": None, "steerability": None,
                           "pwn_weights": None, "seconds": None if seconds is None else round(seconds, 1)}
    error, pareto = job_dir / "error.txt", job_dir / "pareto.json"
    if error.is_file():
        row["status"] = "failed: " + error.read_text().splitlines()[0].removeprefix("error: ")
    if pareto.is_file():
        report = json.loads(pareto.read_text())
        row["hypervolume"] = report.get("hypervolume")
        row["hypervolume_ratio"] = report.get("hypervolume_ratio")
        row["steerability"] = report.get("steerability")
        if report.get("has_pwn", True) and report.get("pwn_choice"):
            row["pwn_weights"] = report["pwn_choice"]["weights"]
    elif row["status"] == "completed":
        row["status"] = "completed (no pareto.json)"
    return row


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v:.2f}" for k, v in value.items())
    if isinstance(value, list):
        return "(" + ", ".join(f"{v:.2f}" for v in value) + ")"
    return str(value)


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rebuild sweep_summary.md/.json from every job's row in the sweep directory; the rows, by job number."""
    rows = []
    for path in sweep_dir.glob(f"*/{ROW_FILE}"):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):  # a row being written right now: the next rebuild takes it
            continue
    rows.sort(key=lambda r: (not str(r["job"]).isdigit(), int(r["job"]) if str(r["job"]).isdigit() else r["job"]))
    _atomic_write(sweep_dir / f"{SUMMARY}.json", json.dumps(rows, indent=2))
    # Overrides every job shares go above the table; each row shows what differs.
    common = set.intersection(*(set(r["overrides"].split()) for r in rows)) if len(rows) > 1 else set()
    header = "| job | overrides | status | final HV | HV ratio | steerability | PWN weights | run time (s) |"
    lines = [f"# Sweep {sweep_dir}", "", f"{len(rows)} job(s) finished so far."]
    if common:
        shared = " ".join(o for o in rows[0]["overrides"].split() if o in common)
        lines.append(f"Every job: `{shared}`")
    lines += ["", header, "|---" * 8 + "|"]
    for r in rows:
        own = " ".join(o for o in r["overrides"].split() if o not in common) or "(none)"
        lines.append(
            f"| {r['job']} | `{own}` | {r['status']} | {_fmt(r['hypervolume'])} | {_fmt(r['hypervolume_ratio'], 3)} "
            f"| {_fmt(r['steerability'])} | {_fmt(r['pwn_weights'])} | {_fmt(r['seconds'], 1)} |"
        )
    _atomic_write(sweep_dir / f"{SUMMARY}.md", "\n".join(lines) + "\n")
    return rows


class SweepSummary(Callback):
    """Hydra callback: a row per multirun job when it ends, and the sweep's table rebuilt each time."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started[config.hydra.runtime.output_dir] = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        start = self.started.pop(str(job_dir), None)
        row = job_row(job_dir, list(job_return.overrides or []), None if start is None else time.time() - start)
        if job_return.status.name == "FAILED" and row["status"] == "completed":
            row["status"] = "failed"
        job_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(job_dir / ROW_FILE, json.dumps(row, indent=2))
        write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            rows = write_summary(sweep_dir)
            print(f"sweep summary ({len(rows)} jobs): {(sweep_dir / SUMMARY).resolve()}.md", flush=True)
