"""A markdown table of mean rewards per objective, over all prompts and per prompt group (no side effects on import)."""

from __future__ import annotations


def group_table(label: str, key: str, result: dict) -> list[str]:
    """One row per `result["rows"]` entry (its `key` names it), one column per (group, objective), "all" first."""
    names, groups = result["objectives"], result["groups"]
    head = " | ".join(f"{n} ({g})" for g in ["all", *groups] for n in names)
    lines = [f"| {label} | {head} |", "|---|" + "---|" * (len(names) * (len(groups) + 1))]
    for row in result["rows"]:
        cells = " | ".join(f"{x:.3f}" for g in ["all", *groups] for x in row[g])
        lines.append(f"| {row[key]} | {cells} |")
    return lines
