"""The methods the benchmark compares, and the policies each trains for one front at an equal budget."""

from __future__ import annotations

from dataclasses import dataclass, field

from meal_pl.pareto import simplex_grid

# front: a front's policies share one policy's samples (the default); policy: each policy gets them all.
BUDGETS = ("front", "policy")


@dataclass(frozen=True)
class Method:
    """How a method turns train configs into one front."""

    kind: str  # single | linear | soups | trl
    overrides: list[str] = field(default_factory=list)
    about: str = ""


METHODS = {
    "ric": Method("single", ["algorithm=ric"], "Dirichlet(1) preferences, hard best-of-N, no PWN (RiC style)"),
    "linear": Method("linear", ["algorithm=linear"], "one unconditioned policy per grid vector (MORLHF style)"),
    "soups": Method("soups", ["algorithm=soups"], "one policy per objective, front by weight interpolation"),
    "meal": Method(
        "single", ["algorithm=meal"],
        "Meal, the default: alternating PWN fits towards the objectives each prompt falls short on (outer=shortfall)",
    ),
    "meal_second_order": Method(
        "single", ["algorithm=meal", "algorithm.meta.lookahead=second_order"], "Meal, exact lookahead, outer=front"
    ),
    "meal_first_order": Method(
        "single", ["algorithm=meal", "algorithm.meta.lookahead=first_order"], "Meal, first-order lookahead, outer=front"
    ),
    "meal_alternating": Method(
        "single", ["algorithm=meal", "algorithm.meta.lookahead=alternating", "algorithm.meta.outer=nondominated_nll"],
        "Meal, alternating PWN fits onto each prompt's non-dominated samples",
    ),
    "meal_frozen": Method(
        "single", ["algorithm=meal", "algorithm.meta.frozen=true"], "Meal with the PWN never updated (ablation)"
    ),
    "trl_grpo": Method("trl", ["algorithm=meal"], "TRL GRPOTrainer, fixed reward_weights (optional [bench])"),
}


def per_run_steps(total: int, runs: int, budget: str) -> int:
    """Policy steps of each of `runs` policies of a front.

    budget="front": the front's policies share the single-policy budget (same generated samples per
    front, the default); budget="policy": every policy gets the full budget (a front then costs
    `runs` times more samples).
    """
    if budget not in BUDGETS:
        raise ValueError(f"bench.budget={budget!r}; choose one of {BUDGETS}")
    return total if budget == "policy" else max(1, round(total / runs))


def plan_runs(
    method: str, steps: int, num_objectives: int, linear_points: int, budget: str
) -> list[tuple[str, list[str]]]:
    """(run name, extra train overrides) of every policy `method` trains for one front."""
    kind = METHODS[method].kind
    if kind in ("single", "trl"):
        return [("main", [f"trainer.max_steps={steps}"])]
    if kind == "linear":
        vectors = simplex_grid(num_objectives, linear_points).tolist()
    elif kind == "soups":
        vectors = [[float(i == k) for i in range(num_objectives)] for k in range(num_objectives)]
    else:
        raise ValueError(f"unknown method kind {kind!r}")
    each = per_run_steps(steps, len(vectors), budget)
    return [
        (f"w{i}", [f"trainer.max_steps={each}", "algorithm.pwn.weights=[" + ",".join(f"{x:.6g}" for x in w) + "]"])
        for i, w in enumerate(vectors)
    ]
