"""Would another frozen encoder make a better harm head? MiniLM against SmolLM2's own hidden states, on the shipped pairs.

    python benchmarks/harm_head_encoders.py [--max-pairs N] [--threads 2]

The reward-model pairs of the shipped split (meal_pl/hh_split.py) with the last 400 held out, as
`python -m meal_pl.reward_model` does. Per feature set, the same protocol: features standardised by the training
pairs' statistics, a linear Bradley-Terry head (meal_pl/reward_model/head.py, 300 full-batch Adam steps), its weight
decay chosen by 5-fold cross-validation on the training pairs alone, then its accuracy on the held-out pairs. Feature
sets: the shipped head's MiniLM features; SmolLM2-135M-Instruct's hidden states at layers 8, 16, 24 and 30, each
mean-pooled over the answer's tokens (the request through its chat template before it), alone and together; MiniLM
and SmolLM2 together. SmolLM2 runs in bfloat16 (a frozen encoder, as the policy's frozen weights do); most of the time
is SmolLM2 reading 3,600 answers (the JSON records each encoder's seconds). Prints the table, writes
harm_head_encoders.json and .md to --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor

from meal_pl.chat import format_prompts, use_chat_template
from meal_pl.reward_model.head import cross_validate, fit_head, pairwise_accuracy
from meal_pl.rewards.relevance import last_request

LAYERS = (8, 16, 24, 30)
DECAYS = (0.1, 1.0, 3.0, 10.0, 30.0)  # standardised features need more decay than the raw ones' 1e-4..1e-2


def request_prefix(tokenizer, request: str) -> str:
    """The request as the policy reads a one-turn HH prompt (meal_pl/chat.py: its chat template if it has one)."""
    use_chat_template(tokenizer, bool(tokenizer.chat_template))
    return format_prompts(tokenizer, [f"\n\nHuman: {request}\n\nAssistant:"])[0]


@torch.no_grad()
def answer_states(model, tokenizer, prompts: list[str], answers: list[str], layers: tuple[int, ...] = LAYERS,
                  batch_size: int = 16, request_tokens: int = 96, max_length: int = 160) -> Tensor:
    """(n, len(layers) * hidden) features: each layer's hidden states averaged over the answer's tokens, read after
    the request (its last `request_tokens`); right padding, so the padded positions never reach a real token."""
    out = []
    for i in range(0, len(prompts), batch_size):
        ids, answer_masks = [], []
        for prompt, answer in zip(prompts[i : i + batch_size], answers[i : i + batch_size]):
            head = tokenizer(request_prefix(tokenizer, last_request(prompt)), add_special_tokens=False).input_ids
            head = head[-request_tokens:]
            tail = tokenizer(answer, add_special_tokens=False).input_ids[: max_length - len(head)] or [tokenizer.eos_token_id]
            ids.append(head + tail)
            answer_masks.append([0.0] * len(head) + [1.0] * len(tail))
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
        attention, mask = torch.zeros(len(ids), width, dtype=torch.long), torch.zeros(len(ids), width, 1)
        for row, (seq, m) in enumerate(zip(ids, answer_masks)):
            input_ids[row, : len(seq)], attention[row, : len(seq)] = torch.tensor(seq), 1
            mask[row, : len(seq), 0] = torch.tensor(m)
        states = model(input_ids=input_ids, attention_mask=attention, output_hidden_states=True).hidden_states
        out.append(torch.cat([(states[layer].float() * mask).sum(1) / mask.sum(1) for layer in layers], dim=-1))
    return torch.cat(out)


def standardise(train: list[Tensor], test: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Every tensor z-scored by the mean and sd of the training tensors together (the held-out ones unseen)."""
    pooled = torch.cat(train)
    mean, sd = pooled.mean(0), pooled.std(0) + 1e-6
    return [(x - mean) / sd for x in train], [(x - mean) / sd for x in test]


def head_accuracy(train_c: Tensor, train_r: Tensor, test_c: Tensor, test_r: Tensor, decays=DECAYS, folds: int = 5,
                  seed: int = 0, steps: int = 300) -> dict:
    """Weight decay chosen by cross-validation on the training pairs, then the held-out pairwise accuracy."""
    (train_c, train_r), (test_c, test_r) = standardise([train_c, train_r], [test_c, test_r])
    cv = cross_validate(train_c, train_r, list(decays), folds, steps=steps, seed=seed)
    decay = max(cv, key=cv.get)
    head = fit_head(train_c, train_r, steps=steps, weight_decay=decay, seed=seed)
    with torch.no_grad():
        held_out = pairwise_accuracy(head(test_c).squeeze(-1), head(test_r).squeeze(-1))
    return {"dims": train_c.shape[1], "cross_validation": cv, "weight_decay": decay, "cv_accuracy": cv[decay],
            "held_out_accuracy": held_out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-pairs", type=int, default=None, help="the first N reward-model pairs (a quick try)")
    parser.add_argument("--held-out", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()
    from common import write_report  # here, not at import: common sets the thread count for timed benchmarks
    from rich.progress import Progress

    from meal_pl.hh_split import shipped_split
    from meal_pl.models import gguf_model
    from meal_pl.reward_model.backends import HeadBackend

    torch.set_num_threads(args.threads)
    pairs = shipped_split()[0][: args.max_pairs]
    n_train = len(pairs) - args.held_out
    start = time.perf_counter()
    with Progress() as progress:  # the shipped head's features, exactly as the reward-model command embeds them
        minilm = HeadBackend()._pair_features(pairs, [], progress, "MiniLM")
    minilm_seconds = time.perf_counter() - start
    model, tokenizer = gguf_model()
    model = model.to(torch.bfloat16).eval()
    prompts, sides = [p.prompt for p in pairs], ("chosen", "rejected")
    smol = {side: answer_states(model, tokenizer, prompts, [getattr(p, side) for p in pairs]) for side in sides}
    smol_seconds = time.perf_counter() - start - minilm_seconds
    hidden = smol["chosen"].shape[1] // len(LAYERS)

    sets = {"MiniLM (the shipped head's features)": minilm}
    sets |= {f"SmolLM2 layer {layer}": {side: smol[side][:, k * hidden : (k + 1) * hidden] for side in sides}
             for k, layer in enumerate(LAYERS)}
    sets[f"SmolLM2 layers {', '.join(map(str, LAYERS))}"] = smol
    sets["MiniLM + SmolLM2 (all four layers)"] = {side: torch.cat([minilm[side], smol[side]], dim=-1) for side in sides}
    rows = []
    for name, x in sets.items():
        c, r = x["chosen"], x["rejected"]
        rows.append({"features": name} | head_accuracy(c[:n_train], r[:n_train], c[n_train:], r[n_train:]))
    lines = [f"{n_train} training pairs, {len(pairs) - n_train} held out; embedding: MiniLM {minilm_seconds:.0f} s, "
             f"SmolLM2 (bf16, {args.threads} threads) {smol_seconds:.0f} s", "",
             "| features | dims | weight decay (by cross-validation) | cross-validation | held-out accuracy |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['features']} | {r['dims']} | {r['weight_decay']:g} | {r['cv_accuracy']:.3f} | "
              f"{r['held_out_accuracy']:.3f} |" for r in rows]
    write_report(args.out, "harm_head_encoders", "Harm heads on other frozen encoders", lines,
                 {"train_pairs": n_train, "held_out_pairs": len(pairs) - n_train, "minilm_seconds": minilm_seconds,
                  "smollm2_seconds": smol_seconds, "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
