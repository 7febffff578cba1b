"""Where a training step's CPU time goes, for ric and each Meal mode at the bench's quick sizes
(objective=synthetic by default, as the issue's quick bench).

    python benchmarks/step_profile.py                    # ric, meal, meal_second_order, meal_first_order, meal_alternating
    python benchmarks/step_profile.py --steps 12 ric     # fewer steps, some methods
    python benchmarks/step_profile.py --objective helpful_harmless
    python benchmarks/step_profile.py ric --set algorithm.sampler.decoder=hf   # any train override

Each method: one run composed as `python -m meal_pl.bench bench.quick=true` composes it (one thread), its
first `--skip` steps left out, then the CPU seconds per step (`time.process_time`, step start to next step
start) split into the `meal_pl.profiling` sections: propose (prompt features + PWN + conditioning), generate,
score (decode + rewards + normalisation), select (rejection sampling, relabelling, training prefixes),
reference (pi_ref's log-probs), meta (the module's meta step; buffering only for ric), base (policy
forward + backward), optimiser (zero_grad, clip, step, LR schedule), logging (log_step), rest (Lightning and
everything else). Framework overhead = the step minus the model's work (generation, scoring, reference
pass, base forward/backward; for Meal modes also propose and the meta step). Prints the table, writes
step_profile.json and step_profile.md to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import NO_EVAL, ROOT, StepClock, quick_config

from meal_pl import profiling
from meal_pl.train import build_run

METHODS = ["ric", "meal", "meal_second_order", "meal_first_order", "meal_alternating"]
PARTS = ["propose", "generate", "score", "select", "reference", "meta", "base", "optimiser", "logging", "rest"]
MODEL_WORK = {"generate", "score", "reference", "base"}
META_WORK = {"propose", "meta"}  # the PWN's and the lookahead's passes: model work for Meal, none for ric


def profile(method: str, steps: int, skip: int, out: Path, objective: str = "synthetic", extra: tuple[str, ...] = ()) -> dict:
    """Mean CPU seconds per part of one run's steps after the first `skip`."""
    overrides = [f"objective={objective}", f"trainer.max_steps={steps + skip + 1}", *NO_EVAL, *extra]
    cfg = quick_config(method, overrides, out / method)
    datamodule, module, trainer = build_run(cfg)
    clock = StepClock()
    trainer.callbacks.insert(0, clock)
    profiling.enable()
    try:
        trainer.fit(module, datamodule=datamodule)
    finally:
        profiling.enable(False)
    measured = clock.steps[skip:]
    mean = {p: statistics.fmean(s.get(p, 0.0) for s in measured) for p in PARTS[:-1]}
    total = statistics.fmean(s["total"] for s in measured)
    mean["rest"] = total - sum(mean.values())
    work = MODEL_WORK | (META_WORK if method != "ric" else set())
    overhead = total - sum(mean[p] for p in work)
    return {"method": method, "steps": len(measured), "step_cpu_s": total, "parts_s": mean,
            "framework_overhead_s": overhead, "framework_overhead_share": overhead / total,
            "overhead_without_optimiser_share": (overhead - mean["optimiser"]) / total,
            "model_work": sorted(work)}


def markdown(rows: list[dict]) -> list[str]:
    ric = next((r["step_cpu_s"] for r in rows if r["method"] == "ric"), None)
    head = ["method", "step CPU s", "x ric"] + PARTS + ["framework overhead", "overhead w/o optimiser"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], f"{r['step_cpu_s']:.4f}", f"{r['step_cpu_s'] / ric:.2f}" if ric else "-"]
        cells += [f"{r['parts_s'][p]:.4f} ({r['parts_s'][p] / r['step_cpu_s']:.0%})" for p in PARTS]
        cells += [f"{r['framework_overhead_share']:.0%}", f"{r['overhead_without_optimiser_share']:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", help=f"any of {METHODS} (default: all)")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per method")
    parser.add_argument("--skip", type=int, default=2, help="first steps left out (lazy set-up)")
    parser.add_argument("--objective", default="synthetic", help="objective config (the issue's quick bench: synthetic)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a train override for every run, e.g. algorithm.sampler.decoder=hf (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "step_profile")
    args = parser.parse_args()
    if unknown := set(args.methods) - set(METHODS):
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for method in args.methods or METHODS:
            rows.append(profile(method, args.steps, args.skip, Path(runs), args.objective, tuple(args.set)))
    lines = markdown(rows)
    ric = next((r for r in rows if r["method"] == "ric"), None)
    if ric:
        lines += ["", f"Framework overhead of a ric step: {ric['framework_overhead_share']:.0%} of {ric['step_cpu_s']:.4f} CPU s "
                  f"({ric['overhead_without_optimiser_share']:.0%} without the optimiser update); target <= 10%."]
    print("\n".join(lines))
    (args.out / "step_profile.json").write_text(json.dumps(rows, indent=1))
    (args.out / "step_profile.md").write_text("# Step profile (CPU seconds per step, bench quick sizes)\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {args.out / 'step_profile.json'}, step_profile.md")


if __name__ == "__main__":
    main()
