"""How far bfloat16 moves what training reads from float32: SmolLM2's log-probabilities and the MiniLM rewards.

    python benchmarks/precision_numerics.py                   # SmolLM2-135M + LoRA, and the shipped rewards
    python benchmarks/precision_numerics.py --prompts 4 --pairs 100

1. Policy: experiment=smollm2_lora's model; `--prompts` training prompts at uniform w, 2 float32 samples each.
   pi_ref's log-probability of every response token in float32, then with the frozen weights held in bfloat16
   under bf16 autocast (hardware=cpu_bf16), and the policy's under the same (the importance ratio pi/pi_ref at
   the first update, which is 1 in exact arithmetic). Per token, in nats: mean and largest absolute gap.
2. Rewards: the helpful (relevance) and harmless (harm head) rewards on the chosen and rejected answers of
   `--pairs` held-out reward-model pairs (meal_pl/hh_split.py), with the MiniLM encoder in float32 and in
   bfloat16: mean and largest absolute score gap, Spearman correlation, and the harm head's held-out pairwise
   accuracy both ways.
Prints the table, writes precision_numerics.json and .md to --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import ROOT, SMOLLM2_STEPS, write_report
from hydra import initialize_config_dir

from meal_pl import precision
from meal_pl.bench.__main__ import run_config
from meal_pl.hh_split import shipped_split
from meal_pl.reward_model.__main__ import hold_out
from meal_pl.rewards.preference_head import PreferenceHeadReward
from meal_pl.rewards.relevance import RelevanceReward
from meal_pl.runs import CONF_DIR
from meal_pl.sampling import encode_prompts, response_mask
from meal_pl.sequences import sequence_logprobs
from meal_pl.train import build


def gap(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a - b).abs()
    return {"mean": float(d.mean()), "max": float(d.max())}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def policy_numerics(prompts: int, out: Path) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = run_config(SMOLLM2_STEPS, out)
    datamodule, module = build(cfg)
    module.eval()
    torch.manual_seed(0)
    batch = list(datamodule.train_prompts[:prompts])
    K = len(module.objective_names)
    ids, mask, _ = encode_prompts(module.tokenizer, batch, module.max_prompt_length)
    prefix, prefix_mask = module.conditioner.condition(ids, mask, torch.full((len(batch), K), 1.0 / K))
    responses = module.generate(prefix, prefix_mask)
    n = responses.shape[0] // len(batch)
    prefix, prefix_mask = prefix.repeat_interleave(n, 0), prefix_mask.repeat_interleave(n, 0)
    tokens = response_mask(responses, module.tokenizer.eos_token_id).bool()
    with torch.no_grad(), module.reference() as ref:
        ref32 = sequence_logprobs(ref, prefix, prefix_mask, responses, conditioner=module.conditioner)
    precision.hold_frozen_in_bf16(module)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with module.reference() as ref:
            ref16 = sequence_logprobs(ref, prefix, prefix_mask, responses, conditioner=module.conditioner)
        policy16 = sequence_logprobs(module.policy, prefix, prefix_mask, responses, conditioner=module.conditioner)
    return {"prompts": len(batch), "responses": int(responses.shape[0]), "tokens": int(tokens.sum()),
            "mean_logp_float32": float(ref32[tokens].mean()),
            "logp_gap_bf16_vs_float32": gap(ref16[tokens], ref32[tokens]),
            "log_ratio_at_first_update_bf16": gap(policy16[tokens], ref16[tokens]),
            "sequence_logp_gap": gap(ref16.masked_fill(~tokens, 0).sum(1), ref32.masked_fill(~tokens, 0).sum(1))}


def reward_numerics(pairs: int) -> dict:
    rm_pairs, _ = shipped_split()
    _, held = hold_out(rm_pairs, 400, 0, shuffle=False)  # the shipped head's held-out pairs
    held = held[:pairs]
    prompts = [p.prompt for p in held] * 2
    answers = [p.chosen for p in held] + [p.rejected for p in held]
    out = {"pairs": len(held)}
    scores = {}
    for dtype in ("float32", "bfloat16"):
        start = time.perf_counter()
        helpful = torch.tensor(RelevanceReward(encoder_dtype=dtype)(prompts, answers))
        harmless = torch.tensor(PreferenceHeadReward(encoder_dtype=dtype)(prompts, answers))
        scores[dtype] = {"helpful": helpful, "harmless": harmless, "seconds": time.perf_counter() - start}
        out[f"harm_head_accuracy_{dtype}"] = float((harmless[: len(held)] > harmless[len(held):]).float().mean())
        out[f"seconds_{dtype}"] = scores[dtype]["seconds"]
    for name in ("helpful", "harmless"):
        a, b = scores["bfloat16"][name], scores["float32"][name]
        out[name] = gap(a, b) | {"spearman": spearman(a, b)}
    return out


def markdown(result: dict) -> list[str]:
    p, r = result["policy"], result["rewards"]
    lines = ["| quantity | mean abs gap | largest abs gap | note |", "|---|---|---|---|",
             f"| SmolLM2 pi_ref log-prob per token, bf16 vs float32 | {p['logp_gap_bf16_vs_float32']['mean']:.4f} | "
             f"{p['logp_gap_bf16_vs_float32']['max']:.4f} | {p['tokens']} tokens, mean log-prob {p['mean_logp_float32']:.2f} |",
             f"| SmolLM2 response log-prob (sum), bf16 vs float32 | {p['sequence_logp_gap']['mean']:.4f} | "
             f"{p['sequence_logp_gap']['max']:.4f} | {p['responses']} responses |",
             f"| log pi/pi_ref at the first update, bf16 | {p['log_ratio_at_first_update_bf16']['mean']:.4f} | "
             f"{p['log_ratio_at_first_update_bf16']['max']:.4f} | 0 in exact arithmetic |"]
    for name in ("helpful", "harmless"):
        lines.append(f"| {name} reward, MiniLM bf16 vs float32 | {r[name]['mean']:.4f} | {r[name]['max']:.4f} | "
                     f"Spearman {r[name]['spearman']:.4f} over {2 * r['pairs']} answers |")
    lines += ["", f"Harm head held-out pairwise accuracy: float32 {r['harm_head_accuracy_float32']:.3f}, bfloat16 "
              f"{r['harm_head_accuracy_bfloat16']:.3f} ({r['pairs']} pairs); scoring both rewards took "
              f"{r['seconds_float32']:.1f} s in float32, {r['seconds_bfloat16']:.1f} s in bfloat16 (first includes loading)."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="SmolLM2 training prompts sampled (2 responses each)")
    parser.add_argument("--pairs", type=int, default=400, help="held-out reward-model pairs scored")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "precision_numerics")
    args = parser.parse_args()
    if args.prompts < 1 or not 1 <= args.pairs <= 400:
        parser.error(f"--prompts {args.prompts} must be >= 1 and --pairs {args.pairs} in 1..400")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"policy": policy_numerics(args.prompts, args.out / "run"), "rewards": reward_numerics(args.pairs)}
    write_report(args.out, "precision_numerics", "bf16 against float32", markdown(result), result)


if __name__ == "__main__":
    main()
