"""Generation CPU time of HF generate (`algorithm.sampler.decoder=hf`) against meal_pl/decode.py's loop
(`decoder=loop`), side by side in one process, on the policy and prompts a ric run generates from.

    python benchmarks/decode_speed.py                      # quick (the bench's quick sizes) and default (model=tiny)
    python benchmarks/decode_speed.py quick --repeats 5
    python benchmarks/decode_speed.py --warm-start-steps 0  # the untrained policy (rows rarely end early)

Each size: the run's config as the bench composes it for ric (quick: `bench.quick=true`; default: the train
config), the policy warm-started as training starts it (`--warm-start-steps`, default: the config's), then
`--batches` batches of the run's B prompts, each conditioned on a Dirichlet(1) preference and sampled
through `MealModule.generate` (N samples each, the run's sampler settings) by both decoders from the same
seed, alternating which goes first. Every pair of outputs and RNG states is checked equal. CPU seconds per
call (`time.process_time`, one torch thread) are the median over `--repeats` passes. Prints the table,
writes decode_speed.json to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, quick_config
from hydra import initialize_config_dir

from meal_pl.bench.__main__ import run_config
from meal_pl.runs import CONF_DIR
from meal_pl.sampling import encode_prompts, response_mask
from meal_pl.train import build

SIZES = ("quick", "default")
DECODERS = ("hf", "loop")


def size_config(size: str, objective: str, out: Path, warm_start_steps: int | None):
    extra = [f"objective={objective}"] + ([f"warm_start.steps={warm_start_steps}"] if warm_start_steps is not None else [])
    if size == "quick":
        return quick_config("ric", extra, out)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return run_config(["algorithm=ric", *extra], out)


def measure(size: str, objective: str, batches: int, repeats: int, warm_start_steps: int | None, out: Path) -> dict:
    cfg = size_config(size, objective, out / size, warm_start_steps)
    torch.manual_seed(cfg.seed)
    datamodule, module = build(cfg)
    if module.warm_start is not None:
        module.warm_start.prepare(module, datamodule)
    sampler, tok = module.sampler, module.tokenizer
    B, N = cfg.data.batch_size, sampler.num_samples
    prompts = datamodule.train_prompts
    dirichlet = torch.distributions.Dirichlet(torch.ones(len(module.objective_names)))
    inputs = []
    for i in range(batches):
        ids, mask, _ = encode_prompts(tok, [prompts[(i * B + j) % len(prompts)] for j in range(B)], module.max_prompt_length)
        torch.manual_seed(i)
        inputs.append(module.conditioner.condition(ids, mask, dirichlet.sample((B,))))
    seconds = {d: [] for d in DECODERS}
    lengths, widths = [], []
    for rep in range(repeats):
        passes = {d: 0.0 for d in DECODERS}
        for i, (prefix, prefix_mask) in enumerate(inputs):
            order = DECODERS if (rep + i) % 2 == 0 else DECODERS[::-1]
            result = {}
            for decoder in order:
                sampler.decoder = decoder
                torch.manual_seed(1000 + i)
                start = time.process_time()
                tokens = module.generate(prefix, prefix_mask)
                passes[decoder] += time.process_time() - start
                result[decoder] = (tokens, torch.get_rng_state())
            (hf, hf_rng), (loop, loop_rng) = result["hf"], result["loop"]
            if not (hf.shape == loop.shape and torch.equal(hf, loop) and torch.equal(hf_rng, loop_rng)):
                raise AssertionError(f"{size}: batch {i}: the loop's tokens or RNG state differ from HF generate's")
            if rep == 0:
                lengths.append(float(response_mask(loop, tok.eos_token_id).sum(1).float().mean()))
                widths.append(loop.shape[1])
        for d in DECODERS:
            seconds[d].append(passes[d] / len(inputs))
    hf_s, loop_s = statistics.median(seconds["hf"]), statistics.median(seconds["loop"])
    model = cfg.model
    return {
        "size": size, "objective": objective, "prompts_per_call": B, "samples_per_prompt": N,
        "max_new_tokens": sampler.max_new_tokens, "min_new_tokens": sampler.min_new_tokens,
        "model": {k: model[k] for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size")},
        "warm_start_steps": module.warm_start.steps if module.warm_start else 0, "batches": batches, "repeats": repeats,
        "mean_response_tokens": statistics.fmean(lengths), "mean_decode_steps": statistics.fmean(widths),
        "hf_cpu_s_per_call": hf_s, "loop_cpu_s_per_call": loop_s, "speedup": hf_s / loop_s,
        "hf_cpu_s_passes": seconds["hf"], "loop_cpu_s_passes": seconds["loop"], "identical": True,
    }


def markdown(rows: list[dict]) -> list[str]:
    head = ["size", "model (H x layers)", "B x N", "new tokens (min-max)", "decode steps", "hf CPU s/call",
            "loop CPU s/call", "speed-up", "tokens + RNG equal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["model"]
        lines.append("| " + " | ".join([
            r["size"], f"{m['hidden_size']} x {m['num_layers']}", f"{r['prompts_per_call']} x {r['samples_per_prompt']}",
            f"{r['min_new_tokens']}-{r['max_new_tokens']}", f"{r['mean_decode_steps']:.1f}",
            f"{r['hf_cpu_s_per_call']:.4f}", f"{r['loop_cpu_s_per_call']:.4f}", f"{r['speedup']:.2f}x",
            "yes" if r["identical"] else "no",
        ]) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", help=f"any of {list(SIZES)} (default: both)")
    parser.add_argument("--objective", default="synthetic")
    parser.add_argument("--batches", type=int, default=6, help="batches of B prompts per pass")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the batches; the median pass counts")
    parser.add_argument("--warm-start-steps", type=int, default=None, help="SFT steps before measuring (default: the config's)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "decode_speed")
    args = parser.parse_args()
    if unknown := set(args.sizes) - set(SIZES):
        parser.error(f"unknown sizes {sorted(unknown)}; choose from {list(SIZES)}")
    torch.set_num_threads(1)  # the bench's quick setting; CPU seconds of one thread
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as runs:
        rows = [measure(size, args.objective, args.batches, args.repeats, args.warm_start_steps, Path(runs))
                for size in args.sizes or SIZES]
    lines = markdown(rows)
    print("\n".join(lines))
    (args.out / "decode_speed.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out / 'decode_speed.json'}")


if __name__ == "__main__":
    main()
