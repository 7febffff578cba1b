"""Train a Bradley-Terry reward model from chosen/rejected pairs: `python -m meal_pl.reward_model [overrides]`.

Defaults: the shipped HH harmless-base split's reward-model pairs (meal_pl/hh_split.py), a head on frozen MiniLM
(rm_backend=head). Writes the model, metrics.json (held-out pairwise accuracy, split, sizes) into `out` (default:
the run directory); objective.rewards.<name>.path points a reward at it. The shipped harm reward model is
`python -m meal_pl.reward_model out=meal_pl/assets/harm_reward_model`.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

import meal_pl  # noqa: F401  (python -m meal_pl.<command> sets the offline default before transformers is imported)
from meal_pl.hh_split import REWARD_MODEL_PAIRS, SPLIT_SEED, shipped_pairs_path, shipped_split
from meal_pl.reward_model.pairs import Pair, load_hub_pairs, load_pairs
from meal_pl.runs import CONF_DIR, one_line, run_checked


def read_pairs(cfg: DictConfig) -> tuple[list[Pair], str]:
    """The pairs to fit on and where they came from; a bad file fails here, before anything is written."""
    if cfg.pairs.path is not None and cfg.pairs.hub_name is not None:
        raise ValueError(f"set one of pairs.path ({cfg.pairs.path!r}) and pairs.hub_name ({cfg.pairs.hub_name!r})")
    if cfg.pairs.hub_name is not None:
        subset = f"{cfg.pairs.data_dir}, " if cfg.pairs.data_dir else ""
        return (load_hub_pairs(cfg.pairs.hub_name, cfg.pairs.split, cfg.pairs.data_dir),
                f"hub {cfg.pairs.hub_name} ({subset}{cfg.pairs.split})")
    if cfg.pairs.path is not None:
        return load_pairs(cfg.pairs.path), cfg.pairs.path
    rm_pairs, _ = shipped_split()
    return rm_pairs, (f"meal_pl/assets/hh_rlhf/{Path(shipped_pairs_path()).name}: the first {REWARD_MODEL_PAIRS} of "
                      f"its distinct prompts after random.Random({SPLIT_SEED}).shuffle (meal_pl/hh_split.py)")


def hold_out(pairs: list[Pair], held_out: int, seed: int, shuffle: bool) -> tuple[list[Pair], list[Pair]]:
    """(training, held-out) pairs, disjoint by prompt: the last `held_out` distinct prompts are held out."""
    prompts = list(dict.fromkeys(p.prompt for p in pairs))
    if shuffle:
        random.Random(seed).shuffle(prompts)
    if not 0 <= held_out < len(prompts):
        raise ValueError(f"pairs.held_out={held_out} must be >= 0 and leave training pairs ({len(prompts)} distinct prompts)")
    test = set(prompts[len(prompts) - held_out :]) if held_out else set()
    return [p for p in pairs if p.prompt not in test], [p for p in pairs if p.prompt in test]


def fit(cfg: DictConfig) -> dict:
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    pairs, source = read_pairs(cfg)
    backend = instantiate(cfg.rm_backend)  # bad settings fail before anything is written
    if cfg.pairs.max_pairs is not None:
        pairs = pairs[: cfg.pairs.max_pairs]
    # The shipped split is already shuffled by its seed; a user's file is shuffled by pairs.seed.
    train, held_out = hold_out(pairs, cfg.pairs.held_out, cfg.pairs.seed, shuffle=cfg.pairs.path is not None or cfg.pairs.hub_name is not None)
    out = Path(cfg.out) if cfg.out is not None else Path(cfg.paths.output_dir)
    start = time.perf_counter()
    metrics = backend.fit(train, held_out, out)
    metrics |= {"pairs": source, "train_pairs": len(train), "held_out_pairs": len(held_out),
                "split": f"held out: the last {cfg.pairs.held_out} distinct prompts of the pairs "
                         f"(shuffled with random.Random({cfg.pairs.seed}) unless they are the shipped split's)",
                "seconds": round(time.perf_counter() - start, 1),
                "command": "python -m meal_pl.reward_model " + " ".join(sys.argv[1:])}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    acc = metrics["held_out_accuracy"]
    print(f"held-out pairwise accuracy {'—' if acc is None else f'{acc:.3f}'} on {len(held_out)} pairs "
          f"({len(train)} trained on, {metrics['seconds']:.0f} s); wrote {out}")
    print(f"use it: python -m meal_pl.train {' '.join(backend.reward_overrides(out.resolve()))}")
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="reward_model")
def main(cfg: DictConfig) -> float | None:
    try:
        return fit(cfg)["held_out_accuracy"]
    except Exception as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(one_line(err), file=sys.stderr)
        sys.exit(1)


def cli() -> None:
    run_checked(main, "reward_model")


if __name__ == "__main__":
    cli()
