"""CPU seconds per step and peak memory of ric and default meal as batch, response length and model grow.

    python benchmarks/scaling.py                 # every point, 5-15 minutes on 2 cores (load-dependent)
    python benchmarks/scaling.py --steps 4       # fewer steps per point (then no meta step of meal is measured)

Each point is one run in its own process (its peak resident memory, ru_maxrss, is its own), composed as
`python -m meal_pl.bench bench.quick=true` composes it (objective=synthetic, one thread), with the warm
start off (a cold policy rarely emits EOS, so responses run to max_new_tokens and the token axis is what it
says; the mean response length is reported) and no evaluation. Axes: batch 4/8/16 (max_new_tokens 16,
quick model), max_new_tokens 16/32/64 (batch 8), model quick (hidden 64, 2 layers) / tiny
(conf/model/tiny.yaml) / a ~20M-parameter tiny Llama (hidden 512, 6 layers, 8 heads, MLP 1376, vocab 2048).
Timings leave out the first --skip steps. Growth per axis is the log-log slope between its end points
(1 = linear, 2 = quadratic). Prints the table, writes scaling.json and scaling.md to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import NO_EVAL, ROOT, StepClock, quick_config
from omegaconf import OmegaConf

SIZE_KEYS = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size")
METHODS = {"ric": "ric", "meal": "meal"}  # meal = the default (alternating, outer=shortfall)
QUICK = {"name": "quick", "overrides": []}  # the bench's quick model
# conf/model/tiny.yaml's sizes over the quick model's, read from the config so the two cannot drift apart.
_TINY_CONFIG = OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml")
TINY = {"name": "tiny", "overrides": [f"model.{key}={_TINY_CONFIG[key]}" for key in SIZE_KEYS]}
LLAMA_20M = {"name": "20M", "overrides": ["model.hidden_size=512", "model.num_layers=6", "model.num_heads=8",
                                          "model.intermediate_size=1376", "model.vocab_size=2048"]}
AXES = {
    "batch": [(QUICK, b, 16) for b in (4, 8, 16)],
    "max_new_tokens": [(QUICK, 8, t) for t in (16, 32, 64)],
    "model": [(m, 8, 16) for m in (QUICK, TINY, LLAMA_20M)],
}


def point(spec: dict) -> dict:
    """One run in this process: CPU s/step after `skip` steps, peak RSS, parameters, response length."""
    import lightning as L
    import torch

    from meal_pl.train import build_run

    torch.set_num_threads(1)
    extra = ["objective=synthetic", "warm_start.steps=0", f"data.batch_size={spec['batch']}",
             f"algorithm.sampler.max_new_tokens={spec['max_new_tokens']}",
             f"trainer.max_steps={spec['steps'] + spec['skip'] + 1}", *NO_EVAL, *spec["model_overrides"]]

    class Lengths(L.Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
            self.values.append(float(trainer.callback_metrics["train/response_length"]))

    with tempfile.TemporaryDirectory() as out:
        datamodule, module, trainer = build_run(quick_config(spec["method"], extra, Path(out)))
        clock, lengths = StepClock(), Lengths()
        trainer.callbacks[:0] = [clock, lengths]
        trainer.fit(module, datamodule=datamodule)
    skip = spec["skip"]
    return {**spec, "params_m": sum(p.numel() for p in module.policy.parameters()) / 1e6,
            "step_cpu_s": statistics.fmean(s["total"] for s in clock.steps[skip:]),
            "response_length": statistics.fmean(lengths.values[skip:]),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_point(spec: dict) -> dict:
    """`point(spec)` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--point", json.dumps(spec)], env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"point {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def growth(rows: list[dict], x: str) -> str:
    """Log-log slope of CPU s/step between an axis's end points, in words."""
    a, b = rows[0], rows[-1]
    slope = math.log(b["step_cpu_s"] / a["step_cpu_s"]) / math.log(b[x] / a[x])
    word = "sublinear" if slope < 0.8 else "about linear" if slope < 1.3 else "superlinear" if slope < 1.8 else "about quadratic"
    return f"slope {slope:.2f} ({word}); x{b[x] / a[x]:.0f} {x} -> x{b['step_cpu_s'] / a['step_cpu_s']:.1f} CPU s/step"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="measured steps per point (8: one of meal's meta steps, every 8 by default)")
    parser.add_argument("--skip", type=int, default=2, help="first steps left out")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "scaling")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(point(json.loads(args.point))))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    results: dict[str, dict[str, list[dict]]] = {}
    for axis, points in AXES.items():
        for model, batch, tokens in points:
            for method in METHODS:
                spec = {"method": method, "model": model["name"], "model_overrides": model["overrides"], "batch": batch,
                        "max_new_tokens": tokens, "steps": args.steps, "skip": args.skip}
                key = json.dumps(spec, sort_keys=True)
                if key not in done:
                    done[key] = run_point(spec)
                    print(f"{method:5} {model['name']:6} B={batch:3} T={tokens:3}: {done[key]['step_cpu_s']:.3f} CPU s/step, "
                          f"{done[key]['peak_rss_mib']:.0f} MiB", flush=True)
                results.setdefault(axis, {}).setdefault(method, []).append(done[key])
    x_of = {"batch": "batch", "max_new_tokens": "max_new_tokens", "model": "params_m"}
    lines = ["| axis | method | model (M params) | batch | max_new_tokens | mean response length | CPU s/step | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    for axis, by_method in results.items():
        for method, rows in by_method.items():
            for r in rows:
                lines.append(f"| {axis} | {method} | {r['model']} ({r['params_m']:.2f}) | {r['batch']} | {r['max_new_tokens']} | "
                             f"{r['response_length']:.1f} | {r['step_cpu_s']:.3f} | {r['peak_rss_mib']:.0f} |")
            notes.append(f"- {axis}, {method}: {growth(rows, x_of[axis])}")
    meal_over_ric = [f"{d['meal'][i]['step_cpu_s'] / d['ric'][i]['step_cpu_s']:.2f}" for d in results.values() for i in range(len(d["ric"]))]
    notes.append(f"- meal / ric CPU s/step at each point, in table order: {', '.join(meal_over_ric)}")
    text = "\n".join(lines + [""] + notes)
    print(text)
    (args.out / "scaling.json").write_text(json.dumps(results, indent=1))
    (args.out / "scaling.md").write_text("# Cost and scaling (CPU, one thread)\n\n" + text + "\n")
    print(f"wrote {args.out / 'scaling.json'}, scaling.md")


if __name__ == "__main__":
    main()
