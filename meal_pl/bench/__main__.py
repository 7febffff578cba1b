"""`python -m meal_pl.bench objective=synthetic bench.quick=true`: every method, same samples, same seeds.

Each method runs in its own process (its peak memory is its own) on train configs composed here from
conf/train.yaml + bench.run_overrides (+ bench.quick_overrides) + your command-line overrides + the
method's overrides. Writes bench.json, bench.md and bench.png to the run directory and prints the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.table import Table

import meal_pl
from meal_pl.bench.plan import BUDGETS, METHODS, plan_runs
from meal_pl.bench.report import (
    GROUP_COLUMNS,
    adaptive_gains,
    checks,
    columns,
    difference_lines,
    differences,
    gain_lines,
    group_rows,
    markdown_group_table,
    markdown_table,
    plot_bench,
    summarize,
    table_rows,
)
from meal_pl.bench.trl_peer import trl_available
from meal_pl.pareto import ideal_hypervolume
from meal_pl.ranges import check_integer
from meal_pl.runs import one_line, run_checked


def run_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """A resolved train config for one policy, writing under output_dir."""
    cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    OmegaConf.resolve(cfg)
    return cfg


def user_overrides() -> list[str]:
    """The command line's train overrides (bench.*, hydra.* and seed are the benchmark's own)."""
    keys = ("bench.", "hydra.", "seed=")
    return [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(keys)]


def skip_reason(name: str) -> str | None:
    """Why a method cannot run here (the optional TRL peer without trl), or None."""
    if METHODS[name].kind == "trl" and not trl_available():
        return 'trl is not installed (pip install -e ".[bench]")'
    return None


def run_method(name: str, spec: dict, out: Path) -> dict:
    """Run one method's worker process and read its result; a crash becomes an error row."""
    spec_path, result_path = out / f"{name}.spec.json", out / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    env = dict(os.environ)
    # The worker must import this same meal_pl (a checkout or worktree may shadow the installed one).
    env["PYTHONPATH"] = os.pathsep.join([str(Path(meal_pl.__file__).parents[1]), env.get("PYTHONPATH", "")])
    if spec.get("threads"):
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "meal_pl.bench.worker", str(spec_path), str(result_path)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    if result_path.is_file():
        return json.loads(result_path.read_text())
    return {"method": name, "kind": spec["kind"], "seeds": {}, "error": f"worker exited with code {proc.returncode} (see {name}.log)"}


def check_bench(bench: DictConfig, linear_points: int | None, threads: int | None) -> None:
    """The benchmark's own settings, before any run: one line naming the key (a run that fails later costs minutes)."""
    check_integer("bench.seeds", bench.seeds, 1, " (seeds per method)")
    check_integer("bench.warmup_steps", bench.warmup_steps, 0, " (first steps left out of the timings)")
    if linear_points is not None:
        check_integer("bench.linear_points", linear_points, 2, ", or null for the objective's grid_points")
    if threads is not None:
        check_integer("bench.threads", threads, 1, ", or null for torch's default")
    if bench.budget not in BUDGETS:
        raise ValueError(f"bench.budget={bench.budget!r}; choose one of {BUDGETS}")
    unknown = [name for name in bench.methods if name not in METHODS]
    if unknown or not bench.methods:
        raise ValueError(f"bench.methods={list(bench.methods)}: unknown or none; choose from {sorted(METHODS)}")


@hydra.main(version_base="1.3", config_path="../../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    try:
        run_bench(cfg)
    except Exception as err:  # one line, as train's; HYDRA_FULL_ERROR=1 keeps the traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(one_line(err), file=sys.stderr)
        sys.exit(1)


def run_bench(cfg: DictConfig) -> None:
    bench, console = cfg.bench, Console(width=200)
    out = Path(cfg.paths.output_dir)
    quick = bench.quick_settings if bench.quick else {}

    def setting(key: str):
        return bench[key] if bench.get(key) is not None else quick.get(key)

    check_bench(bench, setting("linear_points"), setting("threads"))
    base = list(bench.run_overrides) + list(quick.get("overrides", [])) + user_overrides()
    probe = run_config(base + [f"seed={cfg.seed}"], out / "probe")
    names = list(probe.objective.rewards)
    K, steps = len(names), int(probe.trainer.max_steps)
    B, N = int(probe.data.batch_size), int(probe.algorithm.sampler.num_samples)
    reference = [float(x) for x in probe.objective.reference_point]
    synthetic = probe.objective.get("front") == "simplex"
    grid = int(probe.callbacks.pareto_eval.num_points or probe.objective.grid_points)
    draws = int(probe.callbacks.pareto_eval.get("draws", 1))  # every method's evaluation answers each prompt this often
    max_hv = ideal_hypervolume(K, grid, reference) if synthetic else None
    linear_points = int(setting("linear_points") or grid)
    seeds = [int(cfg.seed) + i for i in range(int(bench.seeds))]
    console.print(f"meal-pl bench: objective={probe.objective.name} K={K} seeds={seeds} steps={steps} B={B} N={N} "
                  f"budget={bench.budget} quick={bench.quick} draws={draws} -> {out}")

    results, started = [], time.perf_counter()
    # bench.conditioning=[tags,embedding,...]: every method once per conditioning backend, as separate rows.
    backends = list(bench.conditioning) if bench.get("conditioning") else [None]
    for name, backend in [(n, b) for n in bench.methods for b in backends]:
        label = name if backend is None else f"{name}@{backend}"
        method, reason = METHODS[name], skip_reason(name)
        if reason:
            console.print(f"[yellow]skipping {label}: {reason}[/yellow]")
            results.append({"method": label, "kind": method.kind, "seeds": {}, "error": f"skipped: {reason}"})
            continue
        runs = plan_runs(name, steps, K, linear_points, bench.budget)
        spec = {"method": label, "kind": method.kind, "threads": setting("threads"), "warmup_steps": int(bench.warmup_steps),
                "reward_weights": OmegaConf.to_container(bench.trl_reward_weights) if bench.trl_reward_weights else None,
                "seeds": {}}
        chosen = [] if backend is None else [f"conditioning={backend}"]
        for seed in seeds:
            paths = []
            for run, extra in runs:
                run_dir = out / "runs" / label / f"seed{seed}" / run
                run_dir.mkdir(parents=True, exist_ok=True)
                OmegaConf.save(run_config(base + chosen + method.overrides + extra + [f"seed={seed}"], run_dir), run_dir / "config.yaml")
                paths.append(str(run_dir / "config.yaml"))
            spec["seeds"][str(seed)] = paths
        t0 = time.perf_counter()
        console.print(f"[bold]{label}[/bold]: {len(runs)} polic{'y' if len(runs) == 1 else 'ies'} x {len(seeds)} seeds ...", end=" ")
        results.append(run_method(label, spec, out))
        error = results[-1].get("error")
        console.print(f"{time.perf_counter() - t0:.0f} s" + (f" [red]{error}[/red]" if error else ""))

    rows = [summarize(r, METHODS[r["method"].split("@")[0]].about, B, N, reference, max_hv) for r in results]
    lines = checks(rows, synthetic)
    diffs = differences(rows)
    diff_lines = difference_lines(diffs)
    gains = adaptive_gains(rows, reference)
    table = Table(title=f"meal-pl bench: {probe.objective.name}, {len(seeds)} seeds, equal samples per {bench.budget}")
    for col in columns(names):
        table.add_column(col)
    for cells in table_rows(rows, names):
        table.add_row(*cells)
    console.print(table)
    if group_rows(rows):
        group_table = Table(title="per prompt group (mean over seeds)")
        for col in GROUP_COLUMNS:
            group_table.add_column(col)
        for cells in group_rows(rows):
            group_table.add_row(*cells)
        console.print(group_table)
    for line in lines:
        console.print(line)
    console.print("differences (mean over seeds; pooled sd of the seeds, sqrt((s1^2 + s2^2) / 2) at equal seed counts):")
    for line in diff_lines or ["(none: needs meal_frozen with a meal variant, or meal with ric)"]:
        console.print(f"  {line}")
    console.print("the PWN's own per-prompt choice against static fronts (same seeds):")
    for line in gain_lines(gains) or ["(none: no method with a PWN ran)"]:
        console.print(f"  {line}")
    total = time.perf_counter() - started
    console.print(f"total {total:.0f} s; wrote {out / 'bench.json'}, bench.md, bench.png")

    summary = {"objective": probe.objective.name, "objectives": names, "seeds": seeds, "steps": steps, "batch_size": B,
               "num_samples": N, "budget": bench.budget, "quick": bool(bench.quick), "linear_points": linear_points,
               "draws": draws,
               "reference_point": reference, "max_hypervolume": max_hv, "total_time_s": total,
               "threads": setting("threads"), "overrides": base, "checks": lines, "differences": diffs, "adaptive_gains": gains,
               "methods": rows}
    (out / "bench.json").write_text(json.dumps(summary, indent=1))
    md = [f"# meal-pl bench: {probe.objective.name}", "",
          f"`python -m meal_pl.bench {' '.join(HydraConfig.get().overrides.task)}`; seeds {seeds}; {steps} policy steps "
          f"x {B} prompts x {N} samples per front (budget per {bench.budget}); total {total:.0f} s"
          + (f"; every front from {draws} answers per prompt and preference." if draws > 1 else "."), "",
          markdown_table(rows, names), "", *([markdown_group_table(rows), ""] if group_rows(rows) else []),
          *[f"- {line}" for line in lines], "",
          "Differences (mean hypervolume over seeds; pooled sd of the seeds, sqrt((s1^2 + s2^2) / 2) at equal seed counts):", "",
          *[f"- {line}" for line in diff_lines or ["none: needs meal_frozen with a meal variant, or meal with ric"]], "",
          "The PWN's own per-prompt choice (`preference=auto`) against static fronts, seed by seed:", "",
          *[f"- {line}" for line in gain_lines(gains) or ["none: no method with a PWN ran"]], "",
          "![fronts](bench.png)", ""]
    (out / "bench.md").write_text("\n".join(md))
    plot_bench(rows, names, reference, synthetic and K == 2, out / "bench.png")
    failed = [r["method"] for r in results if r.get("error") and not str(r["error"]).startswith("skipped")]
    if failed:  # written first, so the methods that ran keep their figures; the exit status says not all did
        raise RuntimeError(f"{len(failed)} of {len(results)} methods failed ({', '.join(failed)}); bench.md's rows say "
                           f"why, and the others' figures are in {out / 'bench.json'}")


def cli() -> None:
    run_checked(main, "bench")


if __name__ == "__main__":
    cli()
