"""Does fine-tuning the encoder itself make a better harm reward model than a head on its frozen features?

    python benchmarks/harm_finetune.py [--threads 2] [--out docs/data]

The probe specified in commit a96338e. The shipped split's reward-model pairs (meal_pl/hh_split.py): 1,400 trained
on, the same 400 held out as `python -m meal_pl.reward_model`. all-MiniLM-L6-v2, every weight trainable, reads
(request = the last human turn, answer) as a sentence pair; the score is a linear layer on the mean-pooled last
layer; Bradley-Terry loss, AdamW (weight decay 0.01), 16 pairs a batch, linear warm-up over the first 10% of steps
then linear decay to 0, seed 0.

Selection on the training pairs alone: the first 1,120 trained on, the last 280 validated, lr 2e-5 and 5e-5, the
validation accuracy after epochs 1, 2 and 3 (one schedule of 3 epochs). The best (lr, epochs) (ties: fewer epochs,
then the smaller lr) is retrained on all 1,400 for that many epochs and scored once on the 400 held-out pairs.
Reference on the same inner split: the shipped head's protocol (frozen features, weight decay 1e-2, 500 Adam steps).
Cost: seconds to score 1,000 (request, answer) pairs, each way. Prints the table, writes harm_finetune.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from meal_pl.hh_split import shipped_split
from meal_pl.reward_model.head import bradley_terry_loss, embed_pairs, fit_head, pairwise_accuracy
from meal_pl.rewards.encoder import SentenceEncoder, default_model_path
from meal_pl.rewards.relevance import last_request

TRAIN, HELD_OUT, INNER_TRAIN = 1400, 400, 1120
LRS, EPOCHS, BATCH, MAX_LENGTH = (2e-5, 5e-5), 3, 16, 192


class CrossEncoderScorer(torch.nn.Module):
    """A linear score on the mean-pooled last layer of an encoder reading (request, answer) as a sentence pair."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.encoder = AutoModel.from_pretrained(path)
        self.score = torch.nn.Linear(self.encoder.config.hidden_size, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        states = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return self.score((states * mask).sum(1) / mask.sum(1)).squeeze(-1)


def encode(tokenizer, pairs, answers: list[str]) -> dict:
    return tokenizer([last_request(p.prompt) for p in pairs], answers, padding=True, truncation="longest_first",
                     max_length=MAX_LENGTH, return_tensors="pt")


@torch.no_grad()
def scores(model, tokenizer, pairs, answers: list[str], batch: int = 64) -> torch.Tensor:
    model.eval()
    out = [model(encode(tokenizer, pairs[i : i + batch], answers[i : i + batch])) for i in range(0, len(pairs), batch)]
    return torch.cat(out)


def accuracy(model, tokenizer, pairs) -> float:
    return pairwise_accuracy(scores(model, tokenizer, pairs, [p.chosen for p in pairs]),
                             scores(model, tokenizer, pairs, [p.rejected for p in pairs]))


def train(path: str, tokenizer, pairs, lr: float, epochs: int, validate=None, seed: int = 0) -> tuple:
    """The fine-tuned scorer after `epochs` and [(epoch, validation accuracy)] when `validate` pairs are given."""
    torch.manual_seed(seed)
    model = CrossEncoderScorer(path)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * -(-len(pairs) // BATCH)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / (steps - warmup)))
    order_rng = torch.Generator().manual_seed(seed)
    curve = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(pairs), generator=order_rng).tolist()
        for i in range(0, len(pairs), BATCH):
            batch = [pairs[j] for j in order[i : i + BATCH]]
            s = model(encode(tokenizer, batch + batch, [p.chosen for p in batch] + [p.rejected for p in batch]))
            loss = bradley_terry_loss(s[: len(batch)], s[len(batch) :])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if validate is not None:
            curve.append((epoch, accuracy(model, tokenizer, validate)))
            print(f"  lr {lr:g} epoch {epoch}: validation {curve[-1][1]:.3f}", flush=True)
    return model, curve


def head_accuracy(fit_pairs, test_pairs) -> tuple[float, float]:
    """The shipped head's protocol (frozen MiniLM features, wd 1e-2, 500 steps): (accuracy, seconds per 1,000)."""
    encoder = SentenceEncoder(max_length=128, cache_size=0)
    feats, seconds = {}, 0.0
    for name, pairs in (("fit", fit_pairs), ("test", test_pairs)):
        for side in ("chosen", "rejected"):
            start = time.perf_counter()
            feats[name, side] = embed_pairs(encoder, [p.prompt for p in pairs], [getattr(p, side) for p in pairs])
            if (name, side) == ("test", "rejected"):  # timed on one call, as the fine-tuned model's is below
                seconds = (time.perf_counter() - start) / len(pairs) * 1000
    head = fit_head(feats["fit", "chosen"], feats["fit", "rejected"], weight_decay=1e-2)
    with torch.no_grad():
        acc = pairwise_accuracy(head(feats["test", "chosen"]).squeeze(-1), head(feats["test", "rejected"]).squeeze(-1))
    return acc, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/data"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    reward_pairs, _ = shipped_split()
    train_pairs, held_out = reward_pairs[:TRAIN], reward_pairs[TRAIN : TRAIN + HELD_OUT]
    inner, validation = train_pairs[:INNER_TRAIN], train_pairs[INNER_TRAIN:]
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)

    head_validation, head_seconds = head_accuracy(inner, validation)
    print(f"head on frozen features, validation: {head_validation:.3f}", flush=True)
    curves = {lr: train(path, tokenizer, inner, lr, EPOCHS, validate=validation)[1] for lr in LRS}
    best = max(((acc, -epoch, -lr) for lr, curve in curves.items() for epoch, acc in curve))
    best_acc, best_epochs, best_lr = best[0], -best[1], -best[2]
    model, _ = train(path, tokenizer, train_pairs, best_lr, best_epochs)
    held_out_acc = accuracy(model, tokenizer, held_out)
    t = time.perf_counter()
    sample = held_out * 3  # 1,200 answers: seconds per 1,000 below
    scores(model, tokenizer, sample[:1000], [p.chosen for p in sample[:1000]])
    finetuned_seconds = time.perf_counter() - t

    result = {
        "spec": "commit a96338e", "threads": args.threads, "train_pairs": TRAIN, "held_out_pairs": HELD_OUT,
        "inner_train_pairs": INNER_TRAIN, "validation_pairs": TRAIN - INNER_TRAIN,
        "settings": {"lrs": LRS, "epochs": EPOCHS, "batch_pairs": BATCH, "max_length": MAX_LENGTH,
                     "weight_decay": 0.01, "warmup": 0.1, "seed": 0},
        "head_validation_accuracy": head_validation,
        "validation_curves": {str(lr): curve for lr, curve in curves.items()},
        "selected": {"lr": best_lr, "epochs": best_epochs, "validation_accuracy": best_acc},
        "held_out_accuracy": held_out_acc,
        "seconds_per_1000_answers": {"finetuned_cross_encoder": finetuned_seconds, "head_features": head_seconds},
        "seconds": time.perf_counter() - start,
        "command": "python benchmarks/harm_finetune.py",
    }
    rows = [f"| head on frozen MiniLM features (shipped protocol) | {head_validation:.3f} | (0.637, the shipped model) |"]
    rows += [f"| fine-tuned cross-encoder, lr {lr:g}, epoch {e} | {a:.3f} | "
             f"{f'{held_out_acc:.3f} (selected, retrained on 1,400)' if (lr, e) == (best_lr, best_epochs) else ''} |"
             for lr, curve in curves.items() for e, a in curve]
    table = "\n".join(["| model | validation (280 of the training pairs) | held-out (400) |", "|---|---|---|", *rows])
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "harm_finetune.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "harm_finetune.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
