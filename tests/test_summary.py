"""RunSummary: the end-of-run table, with the PWN's weights per prompt group when the data has groups."""

from types import SimpleNamespace

from meal_pl.callbacks.summary import RunSummary


def _trainer(report: dict) -> SimpleNamespace:
    return SimpleNamespace(is_global_zero=True, global_step=4, default_root_dir="/tmp/run",
                           callbacks=[SimpleNamespace(final_report=report)])


REPORT = {"initial_hypervolume": 0.1, "hypervolume": 0.2, "hypervolume_ratio": None, "objective_names": ["a_to_m", "n_to_z"],
          "pwn_choice": {"weights": [0.5, 0.5]}}


def test_summary_prints_pwn_weights_per_group(capsys):
    groups = {"a": {"num_prompts": 16, "pwn_weights": [0.81, 0.19], "hypervolume": 0.3125},
              "b": {"num_prompts": 16, "pwn_weights": [0.27, 0.73], "hypervolume": None}}
    RunSummary().on_fit_end(_trainer(REPORT | {"groups": groups}), None)
    out = capsys.readouterr().out
    assert "PWN's weights per prompt group" in out and "w a_to_m" in out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert "0.81" in lines["a"] and "0.19" in lines["a"] and "0.3125" in lines["a"]
    assert "0.27" in lines["b"] and "0.73" in lines["b"] and "—" in lines["b"]


def test_summary_without_groups_has_no_group_table(capsys):
    RunSummary().on_fit_end(_trainer(REPORT | {"groups": {}}), None)
    out = capsys.readouterr().out
    assert "0.1000 (initial) -> 0.2000 (final)" in out and "per prompt group" not in out
