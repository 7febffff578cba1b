"""Is there anything for a prompt-dependent preference to add? Per-group static preferences against the static front.

    python benchmarks/group_headroom.py docs/data/default_run_seed0_pareto.json [...]
    python benchmarks/group_headroom.py --transfer A.json B.json [C.json ...]   # choose on each, score on the others

Reads saved evaluations (a run's or `evaluate`'s pareto.json with per-group fronts: every group's mean rewards at
every grid preference). A preference that depends on the prompt's group answers each group at its own grid point;
its mean rewards are the groups' points weighted by their sizes, and the hypervolume it adds to the static grid's
front is what a PWN that read only the group could add. Per file:
- the PWN's own point's gain (the file's `pwn_choice`), for comparison;
- the premise: each group answered at one objective's end (default: red_team at w = harmless's corner, everyday at
  helpful's; refuse the red-team request, answer the everyday one), and its mirror (the ends swapped) as a control.
  Both fixed before any file is read, so neither is selected on the answers it is scored on;
- the best of every per-group assignment of grid points (M^G of them): the most any group-dependent static
  preference adds to this front. Selected on the same answers it is scored on, so an optimistic bound; `--transfer`
  (repeatable: one per checkpoint) chooses it on each of its evaluations of one checkpoint (other sampling seeds)
  in turn and scores that choice on the others;
- the control, group-blind mixing: the best point that answers the same shares of prompts at two grid points chosen
  without reading the group (the prompts split at random, in expectation). A sparse or concave static front lets any
  mixture add hypervolume; only a per-group gain above this one is the group's information at work.

Prints the table, writes group_headroom.json and .md to --out. No model runs: seconds.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from meal_pl.pareto import hypervolume_gain

PREMISE = {"red_team": "harmless", "everyday": "helpful"}


def group_point(fronts: dict[str, torch.Tensor], sizes: dict[str, int], choice: dict) -> torch.Tensor:
    """(K,) mean rewards over all prompts when each group g is answered at grid index choice[g] (a slice: the
    grid's points, one per index)."""
    total = sum(sizes[g] for g in choice)
    return sum(fronts[g][choice[g]] * (sizes[g] / total) for g in choice)


def corner(preferences: torch.Tensor, names: list[str], objective: str) -> int:
    """Grid index of the one-hot preference on `objective`."""
    k = names.index(objective)
    hits = [i for i, w in enumerate(preferences.tolist()) if w[k] == 1.0]
    if not hits:
        raise ValueError(f"the grid has no one-hot preference on {objective!r}")
    return hits[0]


def load(path: Path) -> dict:
    """The parts of a pareto.json this needs, as tensors; refuses files without per-group fronts."""
    report = json.loads(path.read_text())
    groups = report.get("groups") or {}
    if not groups or any(g.get("front") is None for g in groups.values()):
        raise SystemExit(f"{path}: no per-group fronts (groups.<name>.front); it needs an evaluation of grouped prompts")
    sizes = {g: int(v["num_prompts"]) for g, v in groups.items()}
    fronts = {g: torch.tensor(v["front"]) for g, v in groups.items()}
    points = torch.tensor([p["rewards"] for p in report["points"]])
    # The groups must make up the whole front (no prompt outside a group), or their points are not the front's.
    if not torch.allclose(group_point(fronts, sizes, dict.fromkeys(fronts, slice(None))), points, atol=1e-4):
        raise SystemExit(f"{path}: its groups' fronts, weighted by their sizes, are not its points: some prompts "
                         "belong to no group")
    pwn = report.get("pwn_choice") or {}
    return {
        "preferences": torch.tensor([p["preference"] for p in report["points"]]),
        "points": points, "fronts": fronts,
        "sizes": sizes, "names": report["objective_names"], "reference": report["reference_point"],
        "pwn_gain": pwn.get("hypervolume_gain"), "draws": report.get("draws") or 1,
    }


def gain(ev: dict, choice: dict[str, int]) -> float:
    return hypervolume_gain(ev["points"], group_point(ev["fronts"], ev["sizes"], choice), ev["reference"])


def best_choice(ev: dict) -> tuple[dict[str, int], float]:
    """The per-group assignment of grid indices whose point adds the most hypervolume (ties: the first found)."""
    groups, m = sorted(ev["fronts"]), len(ev["points"])
    best, best_gain = None, -1.0
    for indices in itertools.product(range(m), repeat=len(groups)):
        choice = dict(zip(groups, indices, strict=True))
        g = gain(ev, choice)
        if g > best_gain:
            best, best_gain = choice, g
    return best, best_gain


def blind_gain(ev: dict) -> float:
    """The most a group-blind mixture adds: each group's share of prompts at grid points chosen for the whole set."""
    groups = sorted(ev["fronts"])
    total = sum(ev["sizes"].values())
    best = 0.0
    for indices in itertools.product(range(len(ev["points"])), repeat=len(groups)):
        point = sum(ev["points"][i] * (ev["sizes"][g] / total) for g, i in zip(groups, indices, strict=True))
        best = max(best, hypervolume_gain(ev["points"], point, ev["reference"]))
    return best


def headroom(ev: dict, premise: dict[str, str] = PREMISE) -> dict:
    """The PWN's gain, the premise's and its mirror's, the best assignment's and the group-blind control's."""
    ends = {g: corner(ev["preferences"], ev["names"], obj) for g, obj in premise.items()}
    swapped = dict(zip(ends, reversed(list(ends.values())), strict=True))
    choice, best = best_choice(ev)
    return {
        "pwn_gain": ev["pwn_gain"],
        "premise_gain": gain(ev, ends), "mirror_gain": gain(ev, swapped),
        "best_choice": {g: ev["preferences"][i].tolist() for g, i in choice.items()}, "best_gain": best,
        "best_index": choice, "blind_gain": blind_gain(ev),
    }


def transfer_rows(paths: list[Path]) -> list[dict]:
    """Each evaluation's best per-group choice scored on every other evaluation of the same checkpoint."""
    evs = {p: load(p) for p in paths}
    rows = []
    for source, ev in evs.items():
        choice, chosen_gain = best_choice(ev)
        rows += [{"chosen_on": source.name, "choice": choice, "gain_where_chosen": chosen_gain, "file": p.name,
                  "gain": gain(other, choice)} for p, other in evs.items() if p != source]
    return rows


def _w(w: list[float]) -> str:
    return "(" + ", ".join(f"{x:.1f}" for x in w) + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="pareto.json files with per-group fronts")
    parser.add_argument("--transfer", nargs="+", type=Path, action="append", default=[],
                        help="evaluations of one checkpoint: choose on each, score on the others (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()
    if not args.files and not args.transfer:
        parser.error("name pareto.json files, or --transfer with evaluations of one checkpoint")
    if any(len(files) < 2 for files in args.transfer):
        parser.error("--transfer needs at least two evaluations of one checkpoint")
    from common import write_report  # here, not at import: common sets the thread count for timed benchmarks

    rows = [{"file": p.name, "draws": ev["draws"], **headroom(ev)} for p, ev in ((p, load(p)) for p in args.files)]
    lines = [] if not rows else ["| evaluation | draws | PWN's point | premise: red_team harmless, everyday helpful | mirror | "
             "best per-group choice (everyday, red_team) | its gain | group-blind mixing |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pwn = "-" if r["pwn_gain"] is None else f"{r['pwn_gain']:.4f}"
        chosen = ", ".join(_w(r["best_choice"][g]) for g in sorted(r["best_choice"]))
        lines.append(f"| {r['file']} | {r['draws']} | {pwn} | {r['premise_gain']:.4f} | {r['mirror_gain']:.4f} | "
                     f"{chosen} | {r['best_gain']:.4f} | {r['blind_gain']:.4f} |")
    transfer = [row for files in args.transfer for row in transfer_rows(files)]
    if transfer:
        header = ["| best choice chosen on | its gain there | scored on | its gain there |", "|---|---|---|---|"]
        lines += [""] * bool(lines) + header
        lines += [f"| {t['chosen_on']} | {t['gain_where_chosen']:.4f} | {t['file']} | {t['gain']:.4f} |"
                  for t in transfer]
    write_report(args.out, "group_headroom", "Per-group static preferences against the static front", lines,
                 {"rows": rows, "transfer": transfer})


if __name__ == "__main__":
    main()
