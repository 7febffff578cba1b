"""benchmarks/group_headroom.py: what a per-group static preference adds to the static grid's front."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "group_headroom.py"
_spec = importlib.util.spec_from_file_location("group_headroom", _PATH)
group_headroom = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(group_headroom)


def _report(everyday, red_team, pwn_gain=0.001, sizes=(1, 1)) -> dict:
    """A pareto.json over the grid (0, 1), (1, 0) with two groups of the given sizes."""
    n = sum(sizes)
    points = [[(everyday[i][k] * sizes[0] + red_team[i][k] * sizes[1]) / n for k in range(2)] for i in range(2)]
    return {"points": [{"preference": w, "rewards": r} for w, r in zip([[0.0, 1.0], [1.0, 0.0]], points, strict=True)],
            "objective_names": ["helpful", "harmless"], "reference_point": [0.0, 0.0], "num_prompts": n,
            "pwn_choice": {"hypervolume_gain": pwn_gain},
            "groups": {"everyday": {"num_prompts": sizes[0], "front": everyday},
                       "red_team": {"num_prompts": sizes[1], "front": red_team}}}


def _load(tmp_path, report) -> dict:
    path = tmp_path / "pareto.json"
    path.write_text(json.dumps(report))
    return group_headroom.load(path)


def test_the_premise_adds_what_the_groups_trade_off_differently(tmp_path):
    # Everyday answers cost little harmlessness, red-team ones all of it: answering everyday prompts and refusing
    # red-team ones reaches (0.5, 0.95), beyond the static front (0, 1), (1, 0.45).
    ev = _load(tmp_path, _report(everyday=[[0.0, 1.0], [1.0, 0.9]], red_team=[[0.0, 1.0], [1.0, 0.0]]))
    row = group_headroom.headroom(ev)
    assert row["premise_gain"] == pytest.approx(0.5 * (0.95 - 0.45), abs=1e-6)
    assert row["mirror_gain"] == pytest.approx(0.5 * (0.5 - 0.45), abs=1e-6)
    assert row["best_gain"] == pytest.approx(row["premise_gain"])
    assert row["best_choice"] == {"everyday": [1.0, 0.0], "red_team": [0.0, 1.0]} and row["pwn_gain"] == 0.001
    # Half the prompts at each static point, whatever their group: (0.5, 0.725) adds less than the premise.
    assert row["blind_gain"] == pytest.approx(0.5 * (0.725 - 0.45), abs=1e-6)


def test_groups_that_trade_off_alike_add_only_what_blind_mixing_adds(tmp_path):
    # A concave front: any half-and-half mixture, (0.5, 0.5), adds; knowing the group adds nothing more.
    same = [[0.0, 1.0], [1.0, 0.0]]
    row = group_headroom.headroom(_load(tmp_path, _report(everyday=same, red_team=same)))
    assert row["best_gain"] == pytest.approx(0.25) and row["blind_gain"] == pytest.approx(row["best_gain"])
    assert row["premise_gain"] == pytest.approx(row["blind_gain"])


def test_group_point_weights_groups_by_size():
    fronts = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[0.0, 1.0]])}
    point = group_headroom.group_point(fronts, {"a": 3, "b": 1}, {"a": 0, "b": 0})
    assert point.tolist() == [0.75, 0.25]


def test_files_without_group_fronts_are_refused_by_name(tmp_path):
    report = _report(everyday=[[0.0, 1.0], [1.0, 0.9]], red_team=[[0.0, 1.0], [1.0, 0.0]])
    report["groups"]["red_team"]["front"] = None
    with pytest.raises(SystemExit, match="groups.<name>.front"):
        _load(tmp_path, report)
    report = _report(everyday=[[0.0, 1.0], [1.0, 0.9]], red_team=[[0.0, 1.0], [1.0, 0.0]])
    report["points"][0]["rewards"] = [0.3, 0.3]  # a front that prompts outside both groups moved
    with pytest.raises(SystemExit, match="some prompts belong to no group"):
        _load(tmp_path, report)


def test_transfer_scores_each_evaluations_best_choice_on_the_others(tmp_path):
    paths = []
    for name, red_team in (("a.json", [[0.0, 1.0], [1.0, 0.0]]), ("b.json", [[0.0, 1.0], [0.2, 0.1]])):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(_report(everyday=[[0.0, 1.0], [1.0, 0.9]], red_team=red_team)))
    rows = group_headroom.transfer_rows(paths)
    assert [(r["chosen_on"], r["file"]) for r in rows] == [("a.json", "b.json"), ("b.json", "a.json")]
    a, b = (group_headroom.load(p) for p in paths)
    assert rows[0]["choice"] == group_headroom.best_choice(a)[0]
    assert rows[0]["gain"] == pytest.approx(group_headroom.gain(b, rows[0]["choice"]))
    assert rows[0]["gain_where_chosen"] == pytest.approx(group_headroom.best_choice(a)[1])
