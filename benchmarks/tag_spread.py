"""How far apart a trained policy's preference tags are: can its input tell one end of the simplex from the other?

    python benchmarks/tag_spread.py outputs/train/<run> [outputs/train/<other run> ...]

Per run and objective: the distance between the embedding rows of the extreme tags (`<helpful:0.00>` and
`<helpful:1.00>`), after training and at the start (a LoRA run keeps its start rows as the frozen base of peft's
trainable tokens; other runs have no start on record), how far each tag row moved on average, and for scale the mean
distance between two of the model's ordinary tokens (2,000 random pairs, seed 0). Where the conditioning backend has
parameters of its own (`svd_lora`'s U, V, singular values and preference scales, `embedding`'s map), also how far each
moved from its start (the frozen copy pi_ref runs): a preference path that never trained cannot steer. Prints the
tables, writes tag_spread.json and .md to --out (default: the first run's directory).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from meal_pl.conditioning.base import preference_modules
from meal_pl.restore import load_run


def tag_rows(module) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(trained rows (K, R+1, d), start rows or None, ordinary rows (n, d)) of the policy's input embedding."""
    ids = module.conditioner.token_ids  # (K, R+1)
    embedding = module.policy.get_input_embeddings()
    with torch.no_grad():
        trained = embedding(ids).float()
    adapter = getattr(embedding, "token_adapter", None)  # peft's trainable tokens: the base layer holds the start
    start = adapter.base_layer.weight.detach()[ids].float() if adapter is not None else None
    weight = adapter.base_layer.weight if adapter is not None else embedding.weight
    return trained, start, weight.detach()[: int(ids.min())].float()


def spread_rows(names: list[str], trained: torch.Tensor, start: torch.Tensor | None, ordinary: torch.Tensor) -> list[dict]:
    """One row per objective: the extreme tags' distance (trained, start), the mean move of its tag rows, and the
    mean distance between two ordinary tokens."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, len(ordinary), (2000,), generator=g) for _ in range(2))
    ordinary_distance = (ordinary[a] - ordinary[b]).norm(dim=1).mean().item()
    rows = []
    for k, name in enumerate(names):
        rows.append({
            "objective": name,
            "ends_apart": (trained[k, 0] - trained[k, -1]).norm().item(),
            "ends_apart_at_start": None if start is None else (start[k, 0] - start[k, -1]).norm().item(),
            "mean_move": None if start is None else (trained[k] - start[k]).norm(dim=1).mean().item(),
            "ordinary_tokens_apart": ordinary_distance,
        })
    return rows


def backend_moves(policy: torch.nn.Module) -> list[dict]:
    """One row per own parameter of the conditioning backend (summed over its modules): the relative change
    ||p - p0|| / ||p0|| from the start p0 (its frozen copy), the largest change of one entry, and the mean value now."""
    rows = {}
    for module in preference_modules(policy):
        for name in module.PREFERENCE_PARAMS:
            now, start = getattr(module, name).detach().float(), getattr(module, f"frozen_{name}").float()
            r = rows.setdefault(name, {"parameter": name, "change_sq": 0.0, "start_sq": 0.0, "max_change": 0.0,
                                       "total": 0.0, "count": 0})
            r["change_sq"] += (now - start).pow(2).sum().item()
            r["start_sq"] += start.pow(2).sum().item()
            r["max_change"] = max(r["max_change"], (now - start).abs().max().item())
            r["total"] += now.sum().item()
            r["count"] += now.numel()
    return [{"parameter": r["parameter"],
             "relative_change": r["change_sq"] ** 0.5 / r["start_sq"] ** 0.5 if r["start_sq"] > 0 else None,
             "max_change": r["max_change"], "mean": r["total"] / r["count"]} for r in rows.values()]


def main() -> None:
    # Imported here, not at module level: common sets OMP_NUM_THREADS for the process and its children.
    from common import write_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (their checkpoints/last.ckpt) or .ckpt files")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data, lines = {}, ["| run | objective | extreme tags apart (start) | tag rows moved | two ordinary tokens apart |",
                       "|---|---|---|---|---|"]
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    backend_lines = ["", "| run | backend parameter | moved from its start (relative) | largest change of one entry | mean now |",
                     "|---|---|---|---|---|"]
    for run in args.runs:
        module, _, _ = load_run(run)
        tags, moves = spread_rows(module.objective_names, *tag_rows(module)), backend_moves(module.policy)
        data[run] = {"tags": tags, "backend": moves}
        for r in tags:
            lines.append(f"| {run} | {r['objective']} | {fmt(r['ends_apart'])} ({fmt(r['ends_apart_at_start'])}) | "
                         f"{fmt(r['mean_move'])} | {fmt(r['ordinary_tokens_apart'])} |")
        for m in moves:
            backend_lines.append(f"| {run} | {m['parameter']} | {fmt(m['relative_change'])} | {m['max_change']:.4f} | "
                                 f"{m['mean']:.4f} |")
    if len(backend_lines) > 3:
        lines += backend_lines
    write_report(args.out or Path(args.runs[0]), "tag_spread", "Tag spread", lines, data)


if __name__ == "__main__":
    main()
