"""Samples per second: meal-pl's Meal step against TRL's GRPOTrainer on the same model, rewards, batch and precision.

    python benchmarks/trl_speed.py                          # SmolLM2-135M + LoRA (experiment=smollm2_lora), its precision
    python benchmarks/trl_speed.py --set trainer.precision=32-true --set frozen_weights_dtype=float32

Both train from experiment=smollm2_lora's config (any --set override applies to both): B prompts x N samples a step,
the same sampling settings and token limits, the same rewards; GRPO with its own peft LoRA of the same rank on the
same base, in bf16 where the run is bf16-mixed (its LoRA base loaded in bfloat16 when the frozen weights are).
Meal: the steps after the first `--skip`, wall seconds start to next start (benchmarks/step_profile.py's clock); its
meta step runs every `algorithm.meta.every_n_steps` (8) steps and costs several ordinary ones, so `--steps` must cover
a multiple of 8 for the figure to include it at its share (the default 8 with `--skip 1` holds step 8 once);
TRL: its steps after the first `--skip` (TrainerCallback step begin to end). Samples per wall second = B x N over
the mean step. Needs trl (`pip install -e ".[bench]"`). Prints the table, writes trl_speed.json and .md to --out.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from common import ROOT, SMOLLM2_STEPS, write_report
from hydra import initialize_config_dir
from step_profile import profile

from meal_pl.bench.__main__ import run_config
from meal_pl.bench.trl_peer import run_trl, trl_available
from meal_pl.runs import CONF_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8,
                        help="measured steps of each (8: Meal's meta step, every 8 steps, is among them once)")
    parser.add_argument("--skip", type=int, default=1, help="first steps left out of each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a train override for both")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "trl_speed")
    args = parser.parse_args()
    if not trl_available():
        parser.error('trl is not installed: pip install -e ".[bench]"')
    if args.steps < 1 or args.skip < 0:
        parser.error(f"--steps {args.steps} must be >= 1 and --skip {args.skip} >= 0")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as runs:
        meal = profile("meal", args.steps, args.skip, Path(runs), None, tuple(args.set), precision=None, model="smollm2", count=0)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = run_config([*SMOLLM2_STEPS, f"trainer.max_steps={args.skip + args.steps}", *args.set],
                             Path(runs) / "trl")
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        trl = run_trl(cfg, warmup_steps=args.skip, evaluate=False)
    samples = int(cfg.data.batch_size) * int(cfg.algorithm.sampler.num_samples)
    rows = [
        {"method": "meal (meal-pl)", "step_wall_s": meal["step_wall_s"], "step_cpu_s": meal["step_cpu_s"], "steps": meal["steps"]},
        {"method": "GRPO (TRL)", "step_wall_s": statistics.fmean(trl["step_wall"]), "step_cpu_s": statistics.fmean(trl["step_cpu"]),
         "steps": len(trl["step_wall"])},
    ]
    for r in rows:
        r["samples_per_wall_s"] = samples / r["step_wall_s"]
        r["samples_per_cpu_s"] = samples / r["step_cpu_s"]
    ratio = rows[0]["samples_per_wall_s"] / rows[1]["samples_per_wall_s"]
    lines = ["| method | steps | step wall s | samples / wall s | step CPU s | samples / CPU s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['steps']} | {r['step_wall_s']:.2f} | {r['samples_per_wall_s']:.2f} | {r['step_cpu_s']:.2f} | "
              f"{r['samples_per_cpu_s']:.2f} |" for r in rows]
    lines += ["", f"meal / GRPO samples per wall second: {ratio:.2f}x ({samples} samples a step; precision "
              f"{meal['precision_used']}, {meal['threads']} threads)"]
    result = {"rows": rows, "ratio_wall": ratio, "samples_per_step": samples, "overrides": args.set,
              "precision": meal["precision_used"], "threads": meal["threads"]}
    write_report(args.out, "trl_speed", "meal-pl against TRL GRPO, samples per second", lines, result)


if __name__ == "__main__":
    main()
