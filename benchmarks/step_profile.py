"""Where a training step's CPU time goes, for ric and each Meal mode at the bench's quick sizes
(objective=synthetic by default, as the issue's quick bench).

    python benchmarks/step_profile.py                    # ric, meal, meal_second_order, meal_first_order, meal_alternating
    python benchmarks/step_profile.py --steps 12 ric     # fewer steps, some methods
    python benchmarks/step_profile.py --objective helpful_harmless
    python benchmarks/step_profile.py ric --set algorithm.sampler.decoder=hf   # any train override
    python benchmarks/step_profile.py --model smollm2 --steps 4   # experiment=smollm2_lora (meal), per precision
    python benchmarks/step_profile.py --precision float32 bf16-frozen ric   # precisions side by side

Precisions (`--precision`, default float32; --model smollm2: all three): float32, bf16-mixed (Lightning's
autocast plugin), bf16-frozen (bf16-mixed with the frozen weights held in bfloat16: hardware=cpu_bf16).

Each method: one run composed as `python -m meal_pl.bench bench.quick=true` composes it (one thread), its
first `--skip` steps left out, then the CPU seconds per step (`time.process_time`, step start to next step
start; wall seconds too) split into the `meal_pl.profiling` sections: propose (prompt features + PWN + conditioning), generate,
score (decode + rewards + normalisation), select (rejection sampling, relabelling, training prefixes),
reference (pi_ref's log-probs), meta (the module's meta step; buffering only for ric), base (policy
forward + backward), optimiser (zero_grad, clip, step, LR schedule), logging (log_step), rest (Lightning and
everything else). Framework overhead = the step minus the model's work (generation, scoring, reference
pass, base forward/backward; for Meal modes also propose and the meta step). After the timed steps, `--count`
more steps count the model passes' FLOPs (torch's FlopCounterMode; not timed): the achieved GFLOP/s of the model
work is those FLOPs per step over the timed steps' wall seconds, read against benchmarks/peak.py's peak for the
run's precision and thread count (peak.json from --peak, measured now when absent). Prints the tables, writes
step_profile.json and step_profile.md to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import NO_EVAL, ROOT, SMOLLM2_STEPS, StepClock, quick_config, write_report
from hydra import initialize_config_dir
from peak import measure as measure_peak

from meal_pl import profiling
from meal_pl.bench.__main__ import run_config
from meal_pl.precision import FrozenBF16Precision
from meal_pl.runs import CONF_DIR
from meal_pl.train import build_run

METHODS = ["ric", "meal", "meal_second_order", "meal_first_order", "meal_alternating"]
PARTS = ["propose", "generate", "score", "select", "reference", "meta", "base", "optimiser", "logging", "rest"]
MODEL_WORK = {"generate", "score", "reference", "base"}
META_WORK = {"propose", "meta"}  # the PWN's and the lookahead's passes: model work for Meal, none for ric
PRECISIONS = {  # the trainer's precision and the frozen weights' dtype of each variant
    "float32": ["trainer.precision=32-true", "frozen_weights_dtype=float32"],
    "bf16-mixed": ["trainer.precision=bf16-mixed", "frozen_weights_dtype=float32"],
    "bf16-frozen": ["trainer.precision=bf16-mixed", "frozen_weights_dtype=bfloat16"],
}
MODELS = ("tiny", "smollm2")


def compose(method: str, model: str, overrides: list[str], out: Path):
    """The bench's quick config of `method` (tiny), or experiment=smollm2_lora (meal only) with the overrides."""
    if model == "smollm2":
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return run_config([*SMOLLM2_STEPS, *overrides], out)
    return quick_config(method, overrides, out)


def profile(method: str, steps: int, skip: int, out: Path, objective: str | None = "synthetic", extra: tuple[str, ...] = (),
            precision: str | None = "float32", model: str = "tiny", count: int = 1) -> dict:
    """Mean CPU and wall seconds per part of one run's steps after the first `skip`; FLOPs from `count` more."""
    overrides = [f"trainer.max_steps={skip + steps + count + 1}", *NO_EVAL, *PRECISIONS.get(precision, []), *extra]
    if objective:
        overrides.insert(0, f"objective={objective}")
    cfg = compose(method, model, overrides, out / f"{method}-{precision or 'config'}")
    datamodule, module, trainer = build_run(cfg)
    clock = StepClock(count_from=skip + steps if count else None)
    trainer.callbacks.insert(0, clock)
    profiling.enable()
    try:
        trainer.fit(module, datamodule=datamodule)
    finally:
        profiling.enable(False)
    measured, counted = clock.steps[skip:skip + steps], clock.steps[skip + steps:]
    mean = {p: statistics.fmean(s.get(p, 0.0) for s in measured) for p in PARTS[:-1]}
    total = statistics.fmean(s["total"] for s in measured)
    mean["rest"] = total - sum(mean.values())
    wall = {p: statistics.fmean(s.get(f"wall:{p}", 0.0) for s in measured) for p in PARTS[:-1]}
    wall_total = statistics.fmean(s["wall"] for s in measured)
    work = MODEL_WORK | (META_WORK if method != "ric" else set())
    overhead = total - sum(mean[p] for p in work)
    flops = {p: statistics.fmean(s.get(f"flops:{p}", 0.0) for s in counted) for p in PARTS[:-1]} if counted else {}
    import torch  # here, not at the top: common sets OMP_NUM_THREADS before torch is first imported

    frozen = isinstance(trainer.precision_plugin, FrozenBF16Precision)
    # What one decoding step reads: every weight of the policy once, in the dtype it is held in.
    weight_bytes = sum(p.numel() * p.element_size() for p in module.policy.parameters())
    return {"weight_bytes": weight_bytes, "max_new_tokens": module.sampler.max_new_tokens,
            "generate_calls": 1, "method": method, "model": model, "precision": precision, "threads": torch.get_num_threads(),
            "precision_used": f"{trainer.precision}{', frozen weights bfloat16' if frozen else ''}",
            "steps": len(measured), "step_cpu_s": total, "step_wall_s": wall_total, "parts_s": mean, "parts_wall_s": wall,
            "parts_flops": flops, "counted_steps": len(counted),
            "framework_overhead_s": overhead, "framework_overhead_share": overhead / total,
            "overhead_without_optimiser_share": (overhead - mean["optimiser"]) / total,
            "model_work": sorted(work)}


def add_throughput(rows: list[dict], peak: dict) -> None:
    """Each row's achieved GFLOP/s per model part and over all model work, and its share of the matching peak."""
    for r in rows:
        dtype = "float32" if r["precision"] == "float32" else "bfloat16"
        top = peak["peak"].get(str(r["threads"]), {}).get(dtype)
        r["peak_gflops"] = top
        if not r["parts_flops"]:
            continue
        work = [p for p in r["model_work"] if r["parts_wall_s"][p] > 0]
        r["gflops"] = {p: r["parts_flops"][p] / r["parts_wall_s"][p] / 1e9 for p in work}
        model_flops, model_wall = sum(r["parts_flops"][p] for p in work), sum(r["parts_wall_s"][p] for p in work)
        r["model_gflops"] = model_flops / model_wall / 1e9 if model_wall else None
        r["model_share_of_peak"] = r["model_gflops"] / top if top and r["model_gflops"] else None
        r["bounds_s"] = phase_bounds(r, top, peak.get("read_gbs", {}).get(str(r["threads"])))


def phase_bounds(r: dict, peak_gflops: float | None, read_gbs: float | None) -> dict[str, float]:
    """The least seconds each model phase could take on this machine: a pass over whole sequences its FLOPs over the
    matmul peak; decoding (generate) also at least max_new_tokens reads of every weight over the memory bandwidth."""
    bounds = {}
    for part in r["model_work"]:
        flops = r["parts_flops"].get(part, 0.0)
        bound = flops / (peak_gflops * 1e9) if peak_gflops and flops else 0.0
        if part == "generate" and read_gbs:
            bound = max(bound, r["generate_calls"] * r["max_new_tokens"] * r["weight_bytes"] / (read_gbs * 1e9))
        if bound:
            bounds[part] = bound
    return bounds


def bounds_table(rows: list[dict]) -> list[str]:
    """Each model phase's wall seconds beside its bound (phase_bounds) and the bound's share of them."""
    parts = ["generate", "score", "reference", "base", "propose", "meta"]
    lines = ["| run | " + " | ".join(f"{p}: wall s / bound s (share)" for p in parts) + " |", "|" + "---|" * (len(parts) + 1)]
    for r in rows:
        bounds = r.get("bounds_s", {})
        cells = [f"{r['parts_wall_s'][p]:.2f} / {bounds[p]:.3f} ({bounds[p] / r['parts_wall_s'][p]:.0%})"
                 if p in bounds and r["parts_wall_s"].get(p) else "-" for p in parts]
        lines.append(f"| {r['method']} {r['model']} {r['precision']} | " + " | ".join(cells) + " |")
    return lines


def precision_table(rows: list[dict]) -> list[str]:
    """Wall seconds per step, speed-up over the same method's float32 run, and achieved GFLOP/s against the peak."""
    head = ["run", "threads", "step wall s", "x float32", "generate", "reference", "base", "score",
            "model work GFLOP/s", "of peak"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        base = next((b for b in rows if b["precision"] == "float32" and b["method"] == r["method"] and b["model"] == r["model"]), None)
        g = r.get("gflops", {})
        share = r.get("model_share_of_peak")
        cells = [f"{r['method']} {r['model']} {r['precision']}", str(r["threads"]), f"{r['step_wall_s']:.2f}",
                 f"{base['step_wall_s'] / r['step_wall_s']:.2f}" if base else "-"]
        cells += [f"{r['parts_wall_s'][p]:.2f} s, {g[p]:.0f} GFLOP/s" if p in g else f"{r['parts_wall_s'][p]:.2f} s"
                  for p in ("generate", "reference", "base", "score")]
        cells += [f"{r['model_gflops']:.0f}" if r.get("model_gflops") else "-",
                  f"{share:.0%} of {r['peak_gflops']:.0f}" if share else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(rows: list[dict]) -> list[str]:
    ric = next((r["step_cpu_s"] for r in rows if r["method"] == "ric" and r["precision"] == "float32"), None)
    head = ["method", "step CPU s", "x ric"] + PARTS + ["framework overhead", "overhead w/o optimiser"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        name = r["method"] if r["precision"] == "float32" and r["model"] == "tiny" else f"{r['method']} {r['model']} {r['precision']}"
        cells = [name, f"{r['step_cpu_s']:.4f}", f"{r['step_cpu_s'] / ric:.2f}" if ric else "-"]
        cells += [f"{r['parts_s'][p]:.4f} ({r['parts_s'][p] / r['step_cpu_s']:.0%})" for p in PARTS]
        cells += [f"{r['framework_overhead_share']:.0%}", f"{r['overhead_without_optimiser_share']:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", help=f"any of {METHODS} (default: all)")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per method")
    parser.add_argument("--skip", type=int, default=2, help="first steps left out (lazy set-up)")
    parser.add_argument("--objective", default=None,
                        help="objective config (default: synthetic, the quick bench's; --model smollm2: the experiment's)")
    parser.add_argument("--model", choices=MODELS, default="tiny", help="tiny (bench quick sizes) or smollm2 (experiment=smollm2_lora)")
    parser.add_argument("--precision", nargs="+", choices=list(PRECISIONS), default=None,
                        help="precisions to run side by side (default: float32; --model smollm2: all)")
    parser.add_argument("--count", type=int, default=1, help="steps after the timed ones whose FLOPs are counted (0: none)")
    parser.add_argument("--peak", type=Path, default=ROOT / "outputs" / "peak" / "peak.json", help="benchmarks/peak.py's JSON")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a train override for every run, e.g. algorithm.sampler.decoder=hf (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "step_profile")
    args = parser.parse_args()
    if unknown := set(args.methods) - set(METHODS):
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    if args.model == "smollm2" and set(args.methods) - {"meal"}:
        parser.error(f"--model smollm2 profiles experiment=smollm2_lora, a meal run; drop the methods {args.methods}")
    methods = args.methods or (["meal"] if args.model == "smollm2" else METHODS)
    precisions = args.precision or (list(PRECISIONS) if args.model == "smollm2" else ["float32"])
    objective = args.objective or ("synthetic" if args.model == "tiny" else None)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for method in methods:
            for precision in precisions:
                rows.append(profile(method, args.steps, args.skip, Path(runs), objective, tuple(args.set), precision,
                                    args.model, args.count))
    threads = sorted({r["threads"] for r in rows})
    peak = json.loads(args.peak.read_text()) if args.peak.is_file() else None
    if peak is None or any(str(t) not in peak["peak"] or str(t) not in peak.get("read_gbs", {}) for t in threads):
        peak = measure_peak(threads, [1024, 2048])
    add_throughput(rows, peak)
    lines = markdown(rows) + ["", "Wall seconds per step and the model passes' achieved GFLOP/s (FLOPs counted over "
                              f"{args.count} later step(s), wall seconds of the timed ones):", ""] + precision_table(rows)
    lines += ["", "Each model phase against its bound: FLOPs over the matmul peak (benchmarks/peak.py) for passes over whole "
              "sequences; for decoding at least max_new_tokens reads of every weight over the measured memory bandwidth:",
              ""] + bounds_table(rows)
    ric = next((r for r in rows if r["method"] == "ric" and r["precision"] == "float32"), None)
    if ric:
        lines += ["", f"Framework overhead of a ric step: {ric['framework_overhead_share']:.0%} of {ric['step_cpu_s']:.4f} CPU s "
                  f"({ric['overhead_without_optimiser_share']:.0%} without the optimiser update); target <= 10%."]
    write_report(args.out, "step_profile", "Step profile (CPU and wall seconds per step)", lines, rows)


if __name__ == "__main__":
    main()
