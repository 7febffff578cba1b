"""Summaries over seeds, the table (console + markdown), the checks against the issue's targets, the figure."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

from meal_pl.pareto import hypervolume, hypervolume_gain

# The targets, checked on the measured numbers (never used to tune anything).
TARGET_RATIO = 0.90  # synthetic: meal's hypervolume / analytic maximum
TARGET_COST = {"meal": 1.15, "meal_first_order": 1.3, "meal_alternating": 1.1}  # CPU s/step relative to ric
TARGET_SAMPLES = {"ric": 2.0, "meal": 1.5}  # samples per CPU-second relative to TRL's GRPOTrainer (others: >= 1)
MEALS = ("meal", "meal_second_order", "meal_first_order", "meal_alternating")


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (0 for one value); None for no values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_front(run: dict, reference: list[float], max_hv: float | None) -> dict:
    """Hypervolume, ratio and points of one seed's front (TRL's front is its single point)."""
    if "front" in run:
        front = run["front"]
        points = [p["rewards"] for p in front["points"]]
        weights = [p["preference"] for p in front["points"]]
        return {"hv": front["hypervolume"], "ratio": front.get("hypervolume_ratio"), "points": points,
                "weights": weights, "initial_hv": front.get("initial_hypervolume"), "pwn": front.get("pwn_choice"),
                "steerability": front.get("steerability"), "groups": front.get("groups") or {}}
    hv = hypervolume(torch.tensor([run["point"]]), reference)
    return {"hv": hv, "ratio": hv / max_hv if max_hv else None, "points": [run["point"]],
            "weights": [run["reward_weights"]], "initial_hv": None, "pwn": None, "steerability": None, "groups": {}}


def mean_steerability(fronts: list[dict]) -> dict[str, float] | None:
    """Each objective's steerability (rank correlation of w_k and reward k) averaged over seeds; None without."""
    per_seed = [f["steerability"] for f in fronts if f.get("steerability")]
    if not per_seed:
        return None
    return {name: statistics.fmean(s[name] for s in per_seed) for name in per_seed[0]}


def group_summary(fronts: list[dict]) -> dict[str, dict]:
    """Per prompt group, over seeds: the PWN's mean weights, the hypervolume (mean, sample std, per seed) and, where
    the PWN's own choice was evaluated, its mean rewards and the hypervolume it adds to the group's front."""
    names = sorted({g for f in fronts for g in f.get("groups", {})})
    out = {}
    for g in names:
        entries = [f["groups"][g] for f in fronts if g in f.get("groups", {})]
        weights = [e["pwn_weights"] for e in entries if e.get("pwn_weights") is not None]
        hvs = [e["hypervolume"] for e in entries if e.get("hypervolume") is not None]
        hv, hv_std = mean_std(hvs)
        choices = [e["pwn_choice"] for e in entries if e.get("pwn_choice")]
        gain, gain_std = mean_std([c.get("hypervolume_gain") for c in choices])
        out[g] = {"pwn_weights": torch.tensor(weights).mean(0).tolist() if weights else None,
                  "hv": hv, "hv_std": hv_std, "hv_per_seed": hvs,
                  "pwn_rewards": torch.tensor([c["rewards"] for c in choices]).mean(0).tolist() if choices else None,
                  "pwn_gain": gain, "pwn_gain_std": gain_std}
    return out


def pooled_sd(a: list[float], b: list[float]) -> float | None:
    """Pooled sample standard deviation of two groups of seeds: sqrt(((n1-1)s1^2 + (n2-1)s2^2) / (n1+n2-2)).

    For equal seed counts this is sqrt((s1^2 + s2^2) / 2). None when there is no degree of freedom (one seed each).
    """
    if len(a) + len(b) <= 2:
        return None
    squares = sum((len(x) - 1) * statistics.variance(x) for x in (a, b) if len(x) > 1)
    return (squares / (len(a) + len(b) - 2)) ** 0.5


# Differences the issue asks for in every bench: what the meta-learner adds over its frozen ablation, and over RiC.
DIFFERENCES = [(m, "meal_frozen") for m in MEALS] + [("meal", "ric")]


def differences(rows: list[dict]) -> list[dict]:
    """Mean hypervolume difference (a - b) of each pair in DIFFERENCES that ran, with the seeds' pooled sd.

    Also per prompt group when both methods report groups. d = difference / pooled sd (None without spread).
    """
    by = {r["method"]: r for r in rows if r.get("hv_per_seed")}
    out = []
    for a, b in DIFFERENCES:
        if a not in by or b not in by:
            continue
        pairs = [(None, by[a]["hv_per_seed"], by[b]["hv_per_seed"])]
        pairs += [(g, by[a]["groups"][g]["hv_per_seed"], by[b]["groups"][g]["hv_per_seed"])
                  for g in sorted(set(by[a].get("groups") or {}) & set(by[b].get("groups") or {}))]
        for group, hv_a, hv_b in pairs:
            if not hv_a or not hv_b:
                continue
            diff, sd = statistics.fmean(hv_a) - statistics.fmean(hv_b), pooled_sd(hv_a, hv_b)
            out.append({"a": a, "b": b, "group": group, "hv_diff": diff, "pooled_sd": sd,
                        "d": diff / sd if sd else None, "seeds": [len(hv_a), len(hv_b)]})
    return out


def adaptive_gains(rows: list[dict], reference: list[float]) -> list[dict]:
    """For every method with a PWN: the hypervolume its own per-prompt choice adds to its own static front and to
    ric's front, seed by seed (the same seeds), with the mean and the seeds' sample sd. 0 where a front dominates it."""
    by = {r["method"]: r for r in rows if r.get("points_per_seed")}
    out = []
    for method, row in by.items():
        for against in (method, "ric"):
            if against not in by or (against == "ric" and method == "ric"):
                continue
            seeds = sorted(set(row.get("pwn_point_per_seed") or {}) & set(by[against]["points_per_seed"]))
            gains = [hypervolume_gain(torch.tensor(by[against]["points_per_seed"][s]),
                                      torch.tensor(row["pwn_point_per_seed"][s]), reference) for s in seeds]
            if gains:
                mean, sd = mean_std(gains)
                out.append({"method": method, "against": against, "gain": mean, "sd": sd, "per_seed": gains,
                            "seeds": [int(s) for s in seeds]})
    return out


def gain_lines(gains: list[dict]) -> list[str]:
    """'meal's own choice adds HV +0.0123 ± 0.0040 to ric's front (3 seeds: ...)' per entry of adaptive_gains."""
    lines = []
    for g in gains:
        front = "its own static front" if g["against"] == g["method"] else f"{g['against']}'s front"
        seeds = ", ".join(f"{x:.4f}" for x in g["per_seed"])
        lines.append(f"{g['method']}'s own choice adds HV {g['gain']:+.4f} ± {g['sd']:.4f} to {front} "
                     f"({len(g['per_seed'])} seeds: {seeds}; 0 = dominated)")
    return lines


def difference_lines(diffs: list[dict]) -> list[str]:
    """One line per difference, e.g. 'meal - meal_frozen: HV +0.0123 (pooled sd 0.0050, d = 2.46; 3 + 3 seeds)'."""
    lines = []
    for d in diffs:
        where = "" if d["group"] is None else f" (group {d['group']})"  # no [..]: rich reads it as markup
        spread = "pooled sd — (one seed each)" if d["pooled_sd"] is None else f"pooled sd {d['pooled_sd']:.4f}"
        effect = "" if d["d"] is None else f", d = {d['d']:+.2f}"
        lines.append(f"{d['a']} - {d['b']}{where}: HV {d['hv_diff']:+.4f} ({spread}{effect}; "
                     f"{d['seeds'][0]} + {d['seeds'][1]} seeds)")
    return lines


def summarize(result: dict, about: str, batch: int, num_samples: int, reference: list[float], max_hv: float | None) -> dict:
    """One table row from a worker's result: means (± std) over seeds, timings over all measured steps."""
    row = {"method": result["method"], "about": about, "kind": result["kind"], "error": result.get("error"),
           "seeds": sorted(result["seeds"]), "peak_memory_mib": result.get("peak_memory_mib")}
    runs = list(result["seeds"].values())
    if not runs:
        return row
    fronts = [seed_front(r, reference, max_hv) for r in runs]
    row["hv"], row["hv_std"] = mean_std([f["hv"] for f in fronts])
    row["ratio"], row["ratio_std"] = mean_std([f["ratio"] for f in fronts])
    row["initial_hv"], _ = mean_std([f["initial_hv"] for f in fronts])
    row["hv_per_seed"] = [f["hv"] for f in fronts]
    row["steerability"] = mean_steerability(fronts)
    row["groups"] = group_summary(fronts)
    # The mean front: each preference's rewards averaged over seeds (all seeds share the same grid).
    row["front_weights"] = fronts[0]["weights"]
    row["front_mean"] = torch.tensor([f["points"] for f in fronts]).mean(0).tolist()
    choices = [f["pwn"] for f in fronts if f["pwn"]]
    row["pwn_weights"] = torch.tensor([c["weights"] for c in choices]).mean(0).tolist() if choices else None
    row["pwn_rewards"] = torch.tensor([c["rewards"] for c in choices]).mean(0).tolist() if choices else None
    # Per seed (seed -> points): the adaptive point against another method's front of the same seed (adaptive_gains).
    row["points_per_seed"] = {str(seed): f["points"] for seed, f in zip(result["seeds"], fronts, strict=True)}
    row["pwn_point_per_seed"] = {str(seed): f["pwn"]["rewards"] for seed, f in zip(result["seeds"], fronts, strict=True)
                                 if f["pwn"]}
    row["policies"] = runs[0].get("policies", 1)
    row["samples"] = statistics.fmean(r["samples"] for r in runs)
    wall = [t for r in runs for t in r["step_wall"]]
    cpu = [t for r in runs for t in r["step_cpu"]]
    rates = [t for r in runs for t in r["tokens_per_s"]]
    row["step_wall"] = statistics.fmean(wall) if wall else None
    row["step_cpu"] = statistics.fmean(cpu) if cpu else None
    row["tokens_per_s"] = statistics.fmean(rates) if rates else None
    row["samples_per_s"] = batch * num_samples / row["step_wall"] if row["step_wall"] else None
    row["run_time"] = sum(r["run_time"] for r in runs)
    row["policy_loss_first_last"] = [(r["policy_loss"][:1] + r["policy_loss"][-1:]) for r in runs]
    return row


def _fmt(value, spec: str = ".3f", std=None) -> str:
    if value is None:
        return "—"
    return f"{value:{spec}}" + (f" ± {std:{spec}}" if std is not None else "")


COLUMNS = ["method", "policies", "samples/front", "hypervolume", "HV / max", "initial HV", "PWN's own point w -> r",
           "s/step", "CPU s/step", "tokens/s", "samples/s", "peak MiB"]


def columns(names: list[str] | None = None) -> list[str]:
    """COLUMNS plus one steerability column per objective (seed mean of its rank correlation)."""
    return COLUMNS + [f"steer. {n}" for n in names or []]


def table_rows(rows: list[dict], names: list[str] | None = None) -> list[list[str]]:
    """The table's cells, one list per method (with steerability per objective when `names` is given)."""
    out = []
    names = names or []
    for r in rows:
        if "hv" not in r:
            out.append([r["method"], "failed: " + str(r.get("error"))[:120]] + [""] * (len(columns(names)) - 2))
            continue
        steer = r.get("steerability") or {}
        pwn = "—"
        if r.get("pwn_weights"):
            pwn = "(" + ", ".join(f"{w:.2f}" for w in r["pwn_weights"]) + ") -> (" + ", ".join(f"{v:.2f}" for v in r["pwn_rewards"]) + ")"
        out.append([
            r["method"], str(r["policies"]), f"{r['samples']:.0f}", _fmt(r["hv"], ".4f", r["hv_std"]),
            _fmt(r["ratio"], ".3f", r["ratio_std"]), _fmt(r["initial_hv"], ".4f"), pwn, _fmt(r["step_wall"], ".3f"),
            _fmt(r["step_cpu"], ".3f"), _fmt(r["tokens_per_s"], ".0f"), _fmt(r["samples_per_s"], ".1f"),
            _fmt(r["peak_memory_mib"], ".0f"), *[_fmt(steer.get(n), "+.2f") for n in names],
        ])
    return out


def markdown_table(rows: list[dict], names: list[str] | None = None) -> str:
    header = columns(names)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows, names)]
    return "\n".join(lines)


GROUP_COLUMNS = ["method", "group", "PWN's mean weights", "hypervolume", "rewards at the PWN's choice",
                 "HV it adds to the group's front"]


def group_rows(rows: list[dict]) -> list[list[str]]:
    """Per method and prompt group: the PWN's mean weights, the group's hypervolume (± std over seeds), the mean
    rewards under the PWN's own choice and the hypervolume that choice adds to the group's static front."""
    out = []
    for r in rows:
        for g, e in (r.get("groups") or {}).items():
            w = "—" if not e["pwn_weights"] else "(" + ", ".join(f"{x:.2f}" for x in e["pwn_weights"]) + ")"
            learned = bool(r.get("pwn_weights"))  # a static source (ric, linear, soups) has no choice of its own
            at = "—" if not (learned and e.get("pwn_rewards")) else "(" + ", ".join(f"{x:.3f}" for x in e["pwn_rewards"]) + ")"
            gain = _fmt(e.get("pwn_gain"), "+.4f", e.get("pwn_gain_std")) if learned else "—"
            out.append([r["method"], g, w, _fmt(e["hv"], ".4f", e["hv_std"]), at, gain])
    return out


def markdown_group_table(rows: list[dict]) -> str:
    """The per-group table in markdown, or "" when no method reports groups."""
    cells = group_rows(rows)
    if not cells:
        return ""
    lines = ["| " + " | ".join(GROUP_COLUMNS) + " |", "|" + "---|" * len(GROUP_COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


def checks(rows: list[dict], synthetic: bool) -> list[str]:
    """The issue's targets, each as one line with the measured numbers and whether it is met."""
    by = {r["method"]: r for r in rows if "hv" in r}
    lines = []
    meals = [m for m in (*MEALS, "meal_frozen") if m in by]
    if synthetic:
        for m in meals:
            ratio = by[m]["ratio"]
            lines.append(f"{m}: HV / analytic max = {ratio:.3f} (target >= {TARGET_RATIO}): {'met' if ratio >= TARGET_RATIO else 'NOT met'}")
    if "ric" in by:
        for m in meals:
            a, b = by[m]["hv"], by["ric"]["hv"]
            lines.append(f"{m} vs ric: HV {a:.4f} vs {b:.4f} (mean over {len(by[m]['seeds'])} seeds): {'meal >= ric' if a >= b else 'meal < ric'}")
        for m, limit in TARGET_COST.items():
            if m in by and by[m]["step_cpu"] and by["ric"]["step_cpu"]:
                cpu = by[m]["step_cpu"] / by["ric"]["step_cpu"]
                wall = by[m]["step_wall"] / by["ric"]["step_wall"]
                lines.append(f"cost {m} / ric: {cpu:.2f}x CPU time per step, {wall:.2f}x wall (target <= {limit}x): {'met' if cpu <= limit else 'NOT met'}")
        if "meal_second_order" in by and by["meal_second_order"]["step_cpu"]:
            lines.append(f"cost meal_second_order / ric: {by['meal_second_order']['step_cpu'] / by['ric']['step_cpu']:.2f}x CPU time per step (no target)")
    if "trl_grpo" in by and by["trl_grpo"]["samples_per_s"]:
        peer = by["trl_grpo"]
        for m in ["ric", *meals]:
            if m in by and by[m]["samples_per_s"]:
                ours = by[m]
                # Per CPU-second as well: wall time on shared cores depends on what else ran at that moment.
                cpu = peer["step_cpu"] / ours["step_cpu"]
                lines.append(f"samples/s {m} vs TRL GRPOTrainer: {ours['samples_per_s']:.1f} vs {peer['samples_per_s']:.1f} wall "
                             f"({ours['samples_per_s'] / peer['samples_per_s']:.2f}x), {cpu:.2f}x per CPU-second "
                             f"(target >= {TARGET_SAMPLES.get(m, 1.0)}x): {'met' if cpu >= TARGET_SAMPLES.get(m, 1.0) else 'NOT met'}")
    return lines


def plot_bench(rows: list[dict], names: list[str], reference: list[float], simplex_front: bool, path: str | Path,
               zoom: bool = False) -> Figure:
    """Every method's mean front (over seeds) on one plot, with the PWN's own points and the true front; `zoom`
    frames the fronts alone (the reference point, when far, is then off the plot)."""
    fig = Figure(figsize=(7.5, 6), layout="constrained")
    ax = fig.subplots()
    if simplex_front:
        ax.plot([0, 1], [1, 0], color="black", lw=1, ls="--", label="true front (r1 + r2 = 1)")
    markers = "osD^v<>Ph*"
    for i, r in enumerate(row for row in rows if "front_mean" in row):
        pts = torch.tensor(r["front_mean"])[:, :2]
        order = pts[:, 0].argsort()
        style = dict(marker=markers[i % len(markers)], ms=5, lw=1.2, alpha=0.85)
        label = f"{r['method']} (HV {r['hv']:.3f})"
        line = ax.plot(pts[order, 0], pts[order, 1], label=label, **style)[0]
        if r.get("pwn_rewards"):
            ax.scatter([r["pwn_rewards"][0]], [r["pwn_rewards"][1]], marker="*", s=220, color=line.get_color(),
                       edgecolors="black", zorder=5)
    if not zoom:
        ax.scatter([reference[0]], [reference[1]], marker="x", color="red", s=60, label="reference point")
    ax.scatter([], [], marker="*", s=120, color="grey", edgecolors="black", label="PWN's own point")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    title = "mean front over seeds" + (f" (objectives 1-2 of {len(names)})" if len(names) > 2 else "")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.savefig(path, format="png", dpi=100)
    return fig


def main(path: str) -> None:
    """Re-render the table, the checks and the figure of a finished run: python -m meal_pl.bench.report bench.json."""
    summary = json.loads(Path(path).read_text())
    rows = summary["methods"]
    print(markdown_table(rows, summary["objectives"]))
    groups = markdown_group_table(rows)
    if groups:
        print("\n" + groups)
    lines = checks(rows, summary["max_hypervolume"] is not None) + difference_lines(differences(rows))
    for line in lines + gain_lines(adaptive_gains(rows, summary["reference_point"])):
        print("-", line)
    out = Path(path).with_name("bench.png")
    K = len(summary["objectives"])
    plot_bench(rows, summary["objectives"], summary["reference_point"], summary["max_hypervolume"] is not None and K == 2, out)


if __name__ == "__main__":
    main(sys.argv[1])
