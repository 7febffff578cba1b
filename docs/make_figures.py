"""The figures under docs/images/, from the committed JSON under docs/data/ (a bench's bench.json, a run's pareto.json).

    python docs/make_figures.py

To refresh one after rerunning its command, copy the new JSON over the old one (the source of each figure is in
FIGURES) and run this again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meal_pl.bench.report import plot_bench  # noqa: E402
from meal_pl.callbacks.pareto_eval import _choice_points  # noqa: E402
from meal_pl.pareto import plot_front  # noqa: E402

DATA, IMAGES = ROOT / "docs" / "data", ROOT / "docs" / "images"


def load_bench(sources: list[Path]) -> dict:
    """The first bench.json, with the methods that ran (no error row) of every one: benches of one objective, seeds and
    settings run as method subsets side by side."""
    benches = [json.loads(source.read_text()) for source in sources]
    return benches[0] | {"methods": [r for b in benches for r in b["methods"] if not r.get("error")]}


def bench_fronts(sources: list[Path], out: Path) -> None:
    """Every method's mean front over seeds, with each PWN's own point (the bench's own figure, framed on the fronts)."""
    bench = load_bench(sources)
    K = len(bench["objectives"])
    plot_bench(bench["methods"], bench["objectives"], bench["reference_point"],
               bench["max_hypervolume"] is not None and K == 2, out, zoom=True)


def bench_steerability(sources: list[Path], out: Path) -> None:
    """Steerability per method and objective (seed means): does the requested w move each reward?"""
    bench = load_bench(sources)
    rows = [r for r in bench["methods"] if r.get("steerability")]
    names = bench["objectives"]
    fig = Figure(figsize=(7.5, 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [r["steerability"][name] for r in rows], width, label=name)
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="target 0.5")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("steerability (rank corr. of w_k and reward k)")
    ax.set_ylim(-1, 1)
    ax.set_title(f"{bench['objective']}: steerability, mean of {len(bench['seeds'])} seeds")
    ax.legend(fontsize=7)
    fig.savefig(out, format="png", dpi=100)


def run_front(sources: list[Path], out: Path) -> None:
    """A run's final front with the initial one and the PWN's own point, overall and per prompt group."""
    report = json.loads(sources[0].read_text())
    weights = torch.tensor([p["preference"] for p in report["points"]])
    rewards = torch.tensor([p["rewards"] for p in report["points"]])
    choice = {"rewards": torch.tensor(report["pwn_choice"]["rewards"])}
    extra = {"initial": torch.tensor(report["initial_front"])} | _choice_points(choice, report.get("groups") or {})
    plot_front(weights, rewards, report["objective_names"], report["reference_point"], out, extra)


# The quick bench on helpful_harmless ran as method subsets side by side (docs/results.md); the figures join them.
_HH_BENCH = ["bench_helpful_harmless_quick.json", "bench_helpful_harmless_quick_frozen_trl.json",
             "bench_helpful_harmless_quick_second_order.json", "bench_helpful_harmless_quick_first_order.json",
             "bench_helpful_harmless_quick_alternating.json"]
_HH_COMMAND = ("python -m meal_pl.bench objective=helpful_harmless bench.quick=true "
               "(and 'bench.methods=[meal_frozen,trl_grpo]', [meal_second_order], [meal_first_order], [meal_alternating])")
# image -> (maker, source JSONs, the command that wrote them)
FIGURES = {
    "bench_helpful_harmless_quick.png": (bench_fronts, _HH_BENCH, _HH_COMMAND),
    "steerability_helpful_harmless_quick.png": (bench_steerability, _HH_BENCH, _HH_COMMAND),
    "default_run_front.png": (run_front, ["default_run_seed0_pareto.json"], "python -m meal_pl.train seed=0"),
}


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for image, (make, sources, command) in FIGURES.items():
        missing = [s for s in sources if not (DATA / s).is_file()]
        if missing:
            print(f"skip {image}: no docs/data/{missing[0]} (from `{command}`)")
            continue
        make([DATA / s for s in sources], IMAGES / image)
        print(f"wrote docs/images/{image} from docs/data/{', '.join(sources)} ({command})")


if __name__ == "__main__":
    main()
