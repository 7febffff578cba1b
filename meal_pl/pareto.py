"""Pareto-front evaluation: preference grid, dominance, hypervolume and Panacea's front-quality metrics.

Every function treats rewards as quantities to *maximise*. Shapes: M preference points, K objectives.
"""

import itertools
import math
from pathlib import Path

import numpy as np
import torch
import torchmetrics
from matplotlib.figure import Figure
from pymoo.indicators.hv import HV
from scipy.stats import rankdata
from torch import Tensor


def simplex_grid(num_objectives: int, num_points: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Evenly spaced preference vectors on the simplex, the w's at which the front is evaluated.

    The grid is the lattice {i/h : i in N^K, sum(i) = h} with the largest resolution h whose size
    C(h+K-1, K-1) is <= num_points, so num_points is rounded down to a lattice size (K=2: any M >= 2
    is exact, M=11 gives step 0.1; K=3: 21 points is h=5). Rows are sorted lexicographically, so for
    K=2 the grid runs (0, 1), (0.1, 0.9), ..., (1, 0). Returns (M, K).
    """
    if num_objectives < 2:
        raise ValueError(f"num_objectives must be >= 2 for a preference simplex, got {num_objectives}")
    if num_points < num_objectives:
        raise ValueError(
            f"num_points={num_points} is below num_objectives={num_objectives}: the coarsest simplex "
            f"grid (the {num_objectives} corners) already has {num_objectives} points"
        )
    h = 1
    while math.comb(h + 1 + num_objectives - 1, num_objectives - 1) <= num_points:
        h += 1
    # Stars and bars: K-1 bar positions among h+K-1 slots give one composition of h into K parts.
    rows = []
    for bars in itertools.combinations(range(h + num_objectives - 1), num_objectives - 1):
        edges = (-1, *bars, h + num_objectives - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(num_objectives)])
    return torch.tensor(sorted(rows), dtype=torch.float64).div(h).to(dtype)


def non_dominated_mask(points: Tensor) -> Tensor:
    """True where no other point is >= on every objective and > on at least one (maximisation).

    Exact duplicates do not dominate each other, so every copy of a non-dominated point is kept.
    """
    # dominates[i, j]: point j dominates point i. (n, n, K) comparisons; n is a grid size, small.
    ge = (points[None, :, :] >= points[:, None, :]).all(-1)
    gt = (points[None, :, :] > points[:, None, :]).any(-1)
    return ~(ge & gt).any(1)


def hypervolume(points: Tensor | np.ndarray, reference_point: Tensor | np.ndarray | list[float]) -> float:
    """Volume dominated by `points` and bounded below by `reference_point` (maximisation), via pymoo."""
    pts = np.asarray(torch.as_tensor(points, dtype=torch.float64).cpu(), dtype=np.float64).reshape(
        -1, len(reference_point)
    )
    ref = np.asarray(reference_point, dtype=np.float64)
    # Points that do not beat the reference on every objective enclose no volume; drop them so pymoo
    # never sees points outside its box.
    pts = pts[(pts > ref).all(1)]
    if len(pts) == 0:
        return 0.0
    # pymoo minimises: negate both the points and the reference.
    return float(HV(ref_point=-ref)(-pts))


class HypervolumeMetric(torchmetrics.Metric):
    """Hypervolume of all points seen across `update` calls (and ranks: the point lists are gathered)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, reference_point: list[float] | Tensor, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reference_point = [float(r) for r in reference_point]
        self.add_state("points", default=[], dist_reduce_fx="cat")

    def update(self, points: Tensor) -> None:
        """Add (n, K) reward points."""
        self.points.append(points.detach().reshape(-1, len(self.reference_point)).float())

    def compute(self) -> Tensor:
        """Hypervolume of the accumulated points, as a 0-d tensor."""
        if not self.points:  # nothing seen yet
            return torch.tensor(0.0)
        points = torchmetrics.utilities.dim_zero_cat(self.points)
        return torch.tensor(hypervolume(points, self.reference_point))


def mean_inner_product(weights: Tensor, rewards: Tensor) -> float:
    """Mean over the grid of <w, normalised reward>: high when each w pulls rewards its own way.

    Rewards are min-max normalised per objective over the grid (an objective that is constant over
    the grid normalises to 0), so the number does not depend on reward scales.
    """
    lo, hi = rewards.min(0).values, rewards.max(0).values
    normalised = (rewards - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return float((weights * normalised).sum(-1).mean())


def spacing(front: Tensor) -> float:
    """Population std of Euclidean nearest-neighbour distances among front points (0 = evenly spread)."""
    if len(front) < 2:
        return 0.0
    dist = torch.cdist(front.double(), front.double())
    dist.fill_diagonal_(float("inf"))
    return float(dist.min(1).values.std(correction=0))


def sparsity(front: Tensor) -> float:
    """Mean squared gap between neighbouring front points (lower = denser front), as in PGMORL/Panacea.

    Each objective's values are sorted on their own and the squared consecutive gaps summed over
    objectives, divided by n-1. On a K=2 front (sorting objective 0 up sorts objective 1 down) this is
    exactly the squared distance between neighbours along the front; for K>2 it avoids choosing an
    ordering of the points.
    """
    if len(front) < 2:
        return 0.0
    ordered = front.double().sort(0).values
    return float(ordered.diff(dim=0).pow(2).sum() / (len(front) - 1))


def steerability(weights: Tensor, rewards: Tensor) -> Tensor:
    """Spearman rank correlation between w_k and reward k across the grid, one per objective (K,).

    A constant column (e.g. conditioning that changes nothing) has no rank order: it scores 0, not NaN.
    """
    w, r = weights.detach().cpu().double().numpy(), rewards.detach().cpu().double().numpy()
    return torch.from_numpy(_rank_correlations(w, r[None])[0]).float()


def _rank_correlations(weights: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """Spearman correlation of weights (M,K) with each of rewards (B,M,K) along M: (B,K), 0 for a constant column
    (as `steerability`). Average ranks for ties, like scipy's spearmanr, in one array pass over the B fronts."""
    rw = rankdata(weights, axis=0)[None] - (len(weights) + 1) / 2  # (1,M,K): the mean rank is (M+1)/2
    rr = rankdata(rewards, axis=1)
    rr = rr - rr.mean(1, keepdims=True)
    denom = np.sqrt((rw**2).sum(1) * (rr**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (rw * rr).sum(1) / denom
    return np.where(np.isfinite(corr) & (denom > 0), corr, 0.0)


def steerability_interval(weights: Tensor, per_prompt: Tensor, level: float = 0.9, resamples: int = 1000,
                          seed: int = 0) -> Tensor:
    """(K, 2) percentile-bootstrap interval of `steerability` over the evaluation's prompts.

    per_prompt (M,P,K): each prompt's reward under each of the M preferences (NaN where one is missing). The P
    prompts are drawn with replacement `resamples` times and the rank correlation of each redrawn mean front taken.
    A front of few prompts, one sampled answer each, moves with which prompts it holds: an interval that holds 0
    says the evaluation cannot tell the policy's steering from that noise (more prompts narrow it).
    """
    w = weights.detach().cpu().double().numpy()
    r = per_prompt.detach().cpu().double().numpy()
    M, P, K = r.shape
    idx = np.random.default_rng(seed).integers(0, P, size=(resamples, P))
    counts = np.zeros((resamples, P))
    np.add.at(counts, (np.arange(resamples)[:, None], idx), 1.0)  # how often each redraw holds each prompt
    valid = ~np.isnan(r)
    # Each redrawn front as weighted means, (B,P) @ (P,M*K): memory in B*M*K, not B*M*P*K.
    total = counts @ np.where(valid, r, 0.0).transpose(1, 0, 2).reshape(P, M * K)
    present = counts @ valid.transpose(1, 0, 2).reshape(P, M * K).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        fronts = (total / present).reshape(resamples, M, K)  # NaN where a redraw holds none of a point's rewards
    corr = _rank_correlations(w, np.nan_to_num(fronts, nan=0.0))
    tail = (1 - level) / 2
    return torch.from_numpy(np.quantile(corr, [tail, 1 - tail], axis=0).T.copy()).float()


def is_steerable(corr: Tensor, threshold: float = 0.1) -> bool:
    """True when every objective's rank correlation exceeds `threshold` (one dead objective fails it)."""
    return bool((corr > threshold).all())


def ideal_hypervolume(num_objectives: int, num_points: int, reference_point: list[float]) -> float:
    """Hypervolume when each grid preference w yields reward exactly w (the synthetic front sum(r)=1).

    For K=2, M=11, reference 0 this is 0.45: the yardstick of the synthetic objectives' HV / max, not a
    ceiling. M points of the front placed off the grid cover more (K=2: up to M / (2 (M + 1)), 0.458 for 11),
    and for K=3 the 21-point grid's 0.080 is well below what 21 points can reach (the continuous front: 1/6).
    """
    # float64 grid: 0.45 exactly rather than float32's 0.4500000045.
    return hypervolume(simplex_grid(num_objectives, num_points, torch.float64), reference_point)


def simplex_front_hypervolume(num_objectives: int) -> float:
    """Hypervolume of the whole continuous front sum(r)=1, r>=0 against reference 0: 1/K!."""
    return 1.0 / math.factorial(num_objectives)


def plot_front(
    weights: Tensor,
    rewards: Tensor,
    names: list[str],
    reference_point: list[float],
    path: str | Path | None = None,
    extra: dict[str, Tensor] | None = None,
) -> Figure:
    """Scatter the M evaluated points coloured by w_0, with the non-dominated staircase and reference.

    K=2: one panel. K>=3: pairwise panels of the first three objectives (dominance over all K). `extra`
    adds labelled point sets (e.g. the initial front or the PWN's own choice). Built on a bare Figure
    (Agg canvas, no pyplot state), so nothing needs closing; saved as png (dpi 100) when `path` is set.
    """
    num_objectives = rewards.shape[1]
    w, r = weights.detach().cpu().float(), rewards.detach().cpu().float()
    mask = non_dominated_mask(r)
    pairs = [(0, 1)] if num_objectives == 2 else [(0, 1), (0, 2), (1, 2)]
    fig = Figure(figsize=(5 * len(pairs) + 1, 4.5), layout="constrained")
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    extra_sets = {
        label: pts.detach().cpu().float().reshape(-1, num_objectives) for label, pts in (extra or {}).items()
    }
    for ax, (i, j) in zip(axes, pairs, strict=True):
        sc = ax.scatter(
            r[:, i],
            r[:, j],
            c=w[:, 0],
            cmap="viridis",
            vmin=0,
            vmax=1,
            s=36,
            zorder=3,
            edgecolors=["black" if m else "none" for m in mask.tolist()],
            label="front (edge: non-dominated)",
        )
        if num_objectives == 2:
            # Attainment staircase: for x in (x_{i-1}, x_i] the front reaches height y_i.
            front = r[mask][r[mask][:, 0].argsort()]
            xs = [reference_point[0], *front[:, 0].tolist(), front[-1, 0].item()]
            ys = [front[0, 1].item(), *front[:, 1].tolist(), reference_point[1]]
            ax.step(xs, ys, where="pre", color="grey", lw=1, zorder=2)
        ax.scatter(
            [reference_point[i]], [reference_point[j]], marker="x", color="red", s=60, label="reference"
        )
        for (label, pts), marker in zip(extra_sets.items(), itertools.cycle("s^*DPv"), strict=False):
            ax.scatter(pts[:, i], pts[:, j], marker=marker, s=60, alpha=0.8, label=label, zorder=4)
        ax.set_xlabel(names[i])
        ax.set_ylabel(names[j])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.colorbar(sc, ax=axes.tolist(), label=f"w_0 (weight on {names[0]})")
    if path is not None:
        fig.savefig(path, format="png", dpi=100)
    return fig


def front_report(weights: Tensor, rewards: Tensor, names: list[str], reference_point: list[float],
                 per_prompt: Tensor | None = None) -> dict:
    """JSON-serialisable summary of one evaluated front: points, hypervolume and front quality; with the (M,P,K)
    rewards per prompt, also steerability's 90% bootstrap interval over the prompts."""
    w, r = weights.detach().cpu().float(), rewards.detach().cpu().float()
    mask = non_dominated_mask(r)
    corr = steerability(w, r)
    report = {
        "points": [
            # Preferences are lattice points: rounding only strips float32 noise (0.10000000149 -> 0.1).
            {"preference": [round(x, 6) for x in wi], "rewards": ri, "non_dominated": bool(m)}
            for wi, ri, m in zip(w.tolist(), r.tolist(), mask.tolist(), strict=True)
        ],
        "hypervolume": hypervolume(r, reference_point),
        "reference_point": [float(x) for x in reference_point],
        "spacing": spacing(r[mask]),
        "sparsity": sparsity(r[mask]),
        "mean_inner_product": mean_inner_product(w, r),
        "steerability": dict(zip(names, corr.tolist(), strict=True)),
        "steerable": is_steerable(corr),
    }
    if per_prompt is not None:
        report["steerability_interval"] = dict(zip(names, steerability_interval(w, per_prompt).tolist(), strict=True))
    return report


def hypervolume_gain(front: Tensor, point: Tensor, reference_point: list[float]) -> float:
    """Hypervolume that `point` (K,) adds to the `front` (M,K): HV(front + point) - HV(front), 0 when some front
    point dominates it. Measures an adaptive preference (the PWN's own choice) against every static one."""
    front, point = front.detach().float().cpu(), point.detach().float().cpu().reshape(1, -1)
    return max(0.0, hypervolume(torch.cat([front, point]), reference_point) - hypervolume(front, reference_point))


def group_names(groups: list[str | None] | None) -> list[str]:
    """The distinct named groups, sorted; [] when the data names none."""
    return sorted({g for g in groups or [] if g is not None})


def per_group_summary(
    groups: list[str | None],
    pwn_weights: Tensor | None,
    rewards: Tensor | None,
    reference_point: list[float],
    max_hypervolume: float | None = None,
    pwn_rewards: Tensor | None = None,
) -> dict[str, dict]:
    """The PWN's mean weights, the front's hypervolume and the PWN's own point on each prompt group.

    groups: the P evaluation prompts' groups (None = no group, left out); pwn_weights (P,K): the PWN's own
    weights per prompt (None if the module gives none); rewards (M,P,K): raw rewards per grid preference and
    prompt (None if the module gives only means); pwn_rewards (P,K): raw rewards of the responses under the PWN's
    own weights (None if not evaluated). A group's front is its prompts' mean reward at each grid preference,
    scored like the whole front. Returns {group: {num_prompts, pwn_weights, front, hypervolume, hypervolume_ratio,
    pwn_choice: {rewards, hypervolume_gain}}} ({} without groups); absent inputs give None fields.
    """
    summary = {}
    for name in group_names(groups):
        index = torch.tensor([i for i, g in enumerate(groups) if g == name])
        entry: dict = {"num_prompts": len(index), "pwn_weights": None, "front": None, "hypervolume": None,
                       "hypervolume_ratio": None}
        if pwn_weights is not None:
            if len(pwn_weights) != len(groups):
                raise ValueError(f"pwn_weights has {len(pwn_weights)} rows for {len(groups)} prompt groups")
            entry["pwn_weights"] = pwn_weights.detach().float().cpu()[index].mean(0).tolist()
        if rewards is not None:
            if rewards.shape[1] != len(groups):
                raise ValueError(f"rewards (M,P,K) has P={rewards.shape[1]} for {len(groups)} prompt groups")
            front = rewards.detach().float().cpu()[:, index].nanmean(1)  # (M,K)
            entry["front"] = front.tolist()
            entry["hypervolume"] = hypervolume(front, reference_point)
            entry["hypervolume_ratio"] = entry["hypervolume"] / max_hypervolume if max_hypervolume else None
        if pwn_rewards is not None:
            point = pwn_rewards.detach().float().cpu()[index].nanmean(0)
            gain = hypervolume_gain(front, point, reference_point) if rewards is not None else None
            entry["pwn_choice"] = {"rewards": point.tolist(), "hypervolume_gain": gain}
        summary[name] = entry
    return summary
